"""The SentencePiece tokenizer reproduces the official slow LlamaTokenizer (legacy mode) id for id."""

from alignkd.data.tokenizer import Tokenizer


def test_probes_match_official(official, expected):
    _, tok = official
    for probe in expected["tokenizer_probe"]:
        ids = tok(probe["text"])
        assert ids == probe["input_ids"], probe["text"]
        assert tok.pieces(ids) == probe["pieces"]


def test_prompt_chunks_match_official(official, expected):
    _, tok = official
    for case in expected["cases"]:
        for chunk in case["prompt_chunks"]:
            assert tok(chunk["text"]) == chunk["input_ids"]


def test_special_ids_and_settings(official, expected):
    _, tok = official
    spec = expected["tokenizer"]
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (spec["bos"], spec["eos"], spec["unk"], spec["pad"])
    assert tok.vocab_size == spec["vocab_size"]
    assert tok.model_max_length == spec["model_max_length"]


def test_decode_matches_official_text(official, expected):
    _, tok = official
    gen = expected["cases"][0]["generate"]
    assert tok.decode(gen["new_token_ids"]) == gen["decoded_text"]
    assert tok.decode([1] + tok("hello")[1:] + [2]) == "hello"


def test_save_round_trip(official, tmp_path):
    _, tok = official
    tok.save(tmp_path)
    again = Tokenizer.from_folder(tmp_path)
    text = "USER: <image> what is 12 + 3? </s>ASSISTANT:"
    assert again(text) == tok(text)
    assert (tmp_path / "tokenizer_config.json").is_file() and (tmp_path / "special_tokens_map.json").is_file()
