"""TokenEmbeddingsHandler: Replicate's recipe for embeddings.pti works with our files."""

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

from dataset_and_utils import TokenEmbeddingsHandler


def encoders_of(pipeline):
    return [pipeline.text_encoder, pipeline.text_encoder_2], [
        pipeline.tokenizer,
        pipeline.tokenizer_2,
    ]


def test_new_tokens_train_only_their_rows_and_round_trip_through_pti(tiny_models, tmp_path):
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    before = [e.get_input_embeddings().weight.detach().clone() for e in encoders_of(pipeline)[0]]
    handler = TokenEmbeddingsHandler(*encoders_of(pipeline))
    handler.initialize_new_tokens(2, generator=torch.Generator().manual_seed(0))

    ids = pipeline.tokenizer("a photo of <s0><s1>").input_ids
    assert handler.train_ids == ids[-3:-1]
    for encoder, original in zip(encoders_of(pipeline)[0], before, strict=True):
        table = encoder.get_input_embeddings().weight
        assert table.shape[0] == original.shape[0] + 2
        # initialised at the vocabulary's scale, not zeros or unit noise
        assert 0.3 < table[handler.train_ids].std() / original.std() < 3
        table.data += 1.0  # a step that touched everything
    handler.retract_embeddings()
    for encoder, original in zip(encoders_of(pipeline)[0], before, strict=True):
        table = encoder.get_input_embeddings().weight
        assert torch.equal(table[: original.shape[0]], original)

    handler.save_embeddings(tmp_path / "embeddings.pti")
    trained = handler.token_vectors()

    # Replicate's published usage, on a fresh pipeline and on the refiner (no first encoder).
    fresh = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    TokenEmbeddingsHandler(*encoders_of(fresh)).load_embeddings(tmp_path / "embeddings.pti")
    for index, encoder in enumerate(encoders_of(fresh)[0]):
        ids = fresh.tokenizer(["<s0><s1>"]).input_ids[0][1:-1]
        assert torch.equal(encoder.get_input_embeddings().weight[ids], trained[index])

    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_models["refiner"])
    TokenEmbeddingsHandler(*encoders_of(refiner)).load_embeddings(tmp_path / "embeddings.pti")
    ids = refiner.tokenizer_2("<s0><s1>").input_ids[1:-1]
    assert torch.equal(refiner.text_encoder_2.get_input_embeddings().weight[ids], trained[1])


def test_new_tokens_can_start_from_a_word(tiny_models):
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    encoders, tokenizers = encoders_of(pipeline)
    word = [t("photo", add_special_tokens=False).input_ids for t in tokenizers]
    tables = [e.get_input_embeddings().weight for e in encoders]
    expected = [table[ids].mean(0) for table, ids in zip(tables, word, strict=True)]
    handler = TokenEmbeddingsHandler(encoders, tokenizers)
    handler.initialize_new_tokens(2, torch.Generator().manual_seed(0), init_word="photo")
    for encoder, vector in zip(encoders, expected, strict=True):
        rows = encoder.get_input_embeddings().weight[handler.train_ids]
        assert torch.equal(rows, torch.stack([vector, vector]))
