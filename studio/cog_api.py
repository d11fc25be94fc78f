"""One Cog server of the container, as the studio calls it: over HTTP, with the inputs a
Replicate request would send (serving/client.py's error handling and 409 retry)."""

from __future__ import annotations

import requests

from serving.client import ClientError, post_when_free, response_error

ROUTES = {"predict": ("predictions", "Input"), "train": ("trainings", "TrainingInput")}
UNREACHABLE = "UNREACHABLE"


class CogError(RuntimeError):
    """A call the server refused or that failed; the message is the server's."""


class CogServer:
    def __init__(self, url: str, mode: str):
        self.url = url.rstrip("/")
        self.mode = mode
        self.route, self.schema_name = ROUTES[mode]
        self._schema: dict | None = None

    def health(self) -> dict:
        """The server's /health-check, or UNREACHABLE with the reason."""
        try:
            return requests.get(f"{self.url}/health-check", timeout=5).json()
        except (requests.RequestException, ValueError) as error:
            return {"status": UNREACHABLE, "detail": type(error).__name__}

    def inputs(self) -> dict:
        """The schema's input declarations (properties, required, the enumerations'
        choices), read from the server's own /openapi.json once it answers."""
        if self._schema is None:
            schemas = requests.get(f"{self.url}/openapi.json", timeout=30).json()
            schemas = schemas["components"]["schemas"]
            declared = schemas[self.schema_name]
            properties = {}
            for name, prop in declared["properties"].items():
                prop = dict(prop)
                for reference in prop.pop("allOf", ()):  # choices are an enumeration
                    choice = schemas[reference["$ref"].rsplit("/", 1)[-1]]
                    prop |= {"type": choice["type"], "enum": choice["enum"]}
                properties[name] = prop
            self._schema = {"properties": properties, "required": declared.get("required", [])}
        return self._schema

    def run(self, inputs: dict) -> dict:
        """One call, waited for; its finished response (output, logs)."""
        return self._checked(self._post(f"{self.url}/{self.route}", {"input": inputs}))

    def start(self, inputs: dict, webhook: str) -> dict:
        """One call that runs on while its events go to `webhook`; the accepted call."""
        body = {"input": inputs, "webhook": webhook}
        body["webhook_events_filter"] = ["start", "logs", "completed"]
        url = f"{self.url}/{self.route}"
        return self._checked(self._post(url, body, {"Prefer": "respond-async"}))

    def cancel(self, call_id: str) -> None:
        response = self._post(f"{self.url}/{self.route}/{call_id}/cancel", None)
        if response.status_code not in (200, 404):  # 404: it had already ended
            raise CogError(f"Cancelling failed: HTTP {response.status_code}.")

    def _post(self, url: str, body: dict | None, headers: dict | None = None):
        try:
            return post_when_free(url, body, headers)
        except requests.RequestException as error:
            raise CogError(
                f"The {self.mode} server at {self.url} does not answer ({type(error).__name__}): "
                f"start it again (make serve{'-train' if self.mode == 'train' else ''}), or "
                "restart the studio, which starts its own."
            ) from None

    def _checked(self, response: requests.Response) -> dict:
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {"error": response.text[:500]}
        if response.status_code == 409:
            raise CogError(
                f"The {self.mode} server is busy with another call (HTTP 409): wait until it "
                "has finished, then try again."
            )
        error: ClientError | None = response_error(self.route[:-1], response.status_code, body)
        if error is not None:
            raise CogError(str(error))
        return body
