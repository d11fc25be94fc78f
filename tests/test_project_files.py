"""Project files users and CI rely on: the example set and the Cog build config."""

import ast
import csv
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_example_set_is_a_zip_of_photos_with_matching_captions():
    with zipfile.ZipFile(ROOT / "examples" / "cat_photos.zip") as archive:
        images = [n for n in archive.namelist() if n.endswith(".jpg")]
        rows = list(csv.DictReader(io.StringIO(archive.read("caption.csv").decode())))
        for name in images:
            Image.open(io.BytesIO(archive.read(name))).verify()
    assert len(images) >= 5
    assert sorted(row["image_file"] for row in rows) == sorted(images)
    assert all("TOK" in row["caption"] for row in rows)


def test_cog_yaml_installs_the_no_deps_packages_pinned_in_requirements():
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    pinned = {
        line.strip()
        for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    installs = [cmd for cmd in config["build"]["run"] if "--no-deps" in cmd]
    assert len(installs) == 1 and set(installs[0].split()[3:]) == pinned
    assert config["predict"] == "predict.py:Predictor"
    assert config["build"]["gpu"] is True
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()


def test_each_container_config_names_its_entry_files_and_builds_the_same_image():
    from serving.containers import CONTAINERS

    configs = {
        name: yaml.safe_load((ROOT / c.cog_config).read_text()) for name, c in CONTAINERS.items()
    }
    for name, container in CONTAINERS.items():
        assert configs[name]["predict"] == container.predictor
        assert configs[name]["train"] == container.trainer
        assert (ROOT / container.cog_config).parent == ROOT  # `cog build -f` copies by name
    builds = [config["build"] for config in configs.values()]
    assert all(build == builds[0] for build in builds)


def test_the_image_installs_what_every_offered_optimizer_needs():
    from training.config import OPTIMIZERS

    runs = yaml.safe_load((ROOT / "cog.yaml").read_text())["build"]["run"]
    dev_pin = next(
        line
        for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
        if line.startswith("bitsandbytes==")
    )
    assert "adamw8bit" in OPTIMIZERS
    assert f"pip install {dev_pin}" in runs  # the version the CPU tests run it with
    assert "bitsandbytes" not in (ROOT / "requirements.txt").read_text()  # no CPU start-up cost


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for a build-context path: the last pattern matching it or one of its
    parent folders decides; `!` re-includes; `*`, `?` stay within a folder, `**` crosses."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        expression = _docker_regex(pattern.lstrip("!").strip("/"))
        if any(expression.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def _docker_regex(pattern: str):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_the_docker_context_holds_the_imported_code_and_nothing_heavy():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Every project module the Cog entry points import, found by importing them.
    from serving.containers import CONTAINERS, entry_point

    entries = [c.predictor for c in CONTAINERS.values()] + [c.trainer for c in CONTAINERS.values()]
    modules = ", ".join(sorted({entry_point(reference)[0] for reference in entries}))
    script = (
        f"import sys, {modules}; "
        "print('\\n'.join(getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    imported = sorted(
        Path(f).relative_to(ROOT).as_posix()
        for f in loaded
        if Path(f).is_relative_to(ROOT) and not Path(f).is_relative_to(ROOT / ".venv")
    )
    configs = [container.cog_config for container in CONTAINERS.values()]
    needed = [*imported, *configs, "requirements.txt", "requirements-nodeps.txt"]
    needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / "weights/embedded").rglob("*.*")]
    assert len(imported) > 20 and "weights/store.py" in imported
    assert [p for p in needed if docker_ignored(p, patterns)] == []
    heavy = [
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".git/objects/ab/cdef",
        "outputs/output.0.png",
        ".cache/sdxl-tuner/store/x",
        "generation/__pycache__/engine.cpython-311.pyc",
        ".pytest_cache/v/cache",
        "weights.tar",
        "tests/test_predict.py",
        "benchmarks/quality/samples.png",
        "toyworld/pretrain.py",
    ]
    assert [p for p in heavy if not docker_ignored(p, patterns)] == []


def project_imports(path: Path) -> set[str]:
    """The top-level project packages and modules a file imports."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_preprocess_training_and_generation_share_contracts_not_each_other():
    halves = ("preprocess", "training", "generation")
    crossings = []
    for half in halves:
        for path in sorted((ROOT / half).rglob("*.py")):
            others = project_imports(path) & (set(halves) - {half})
            crossings += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(others)]
    assert crossings == []
    # The neutral layers below them import none of them either; the families, at the bottom,
    # only the formats. A family's `container/` folder holds Cog entry files: the top layer.
    for layer in ("formats", "weights", "families"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            if "container" not in path.relative_to(ROOT).parts:
                assert not project_imports(path) & {*halves, "serving", "toyworld"}, path
                assert layer != "families" or "weights" not in project_imports(path), path
    # The Ray cluster path sits on top: the containers import nothing of it (nor Ray).
    for layer in (*halves, "formats", "weights", "families", "serving"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            assert not project_imports(path) & {"fleet", "ray"}, path


def test_docs_stay_inside_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages += [ROOT / "benchmarks" / "README.md", ROOT / "toyworld" / "README.md"]
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, page
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):  # relative links resolve
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
    assert (ROOT / "README.md").stat().st_size <= 16_000
