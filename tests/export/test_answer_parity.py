"""The yes/no answer check of export parity (alignkd.export.parity.answer_parity): what it measures, when it binds,
and that a bundle which flips (or nearly flips) the eager model's yes/no answers fails the export in one sentence.

The tiny fixture has random weights, so its own first tokens are no answers; the answering models here are the
fixture with a logit added to its "Yes" or "No" piece (`Biased`): a trained model's near-tie answer is exactly
that, a small constant margin decided by the language prior.
"""

import json

import pytest
import torch

from alignkd.errors import AlignKDError
from alignkd.export import parity


def _loaded(checkpoint):
    from alignkd.models.checkpoint import load_checkpoint
    from alignkd.runtime.generation import EagerBackend

    model, tokenizer = load_checkpoint(checkpoint)
    return EagerBackend(model), tokenizer, model.config.image


class Biased:
    """A backend whose prefill answers `word` ("yes" / "no") by a margin of `bias` logits over the opposite word,
    both above every other token."""

    def __init__(self, backend, tokenizer, word: str, bias: float):
        ids = parity.yes_no_ids(tokenizer)
        self.backend, self.ids, self.other, self.bias = backend, ids[word], ids["no" if word == "yes" else "yes"], bias
        self.max_seq_len = backend.max_seq_len

    def encode_image(self, pixels):
        return self.backend.encode_image(pixels)

    def embed_tokens(self, ids):
        return self.backend.embed_tokens(ids)

    def prefill(self, embeds):
        logits = self.backend.prefill(embeds).clone()
        top = logits.max() + 1.0
        logits[self.other], logits[self.ids] = top, top + self.bias
        return logits

    def decode(self, embeds, position):
        return self.backend.decode(embeds, position)


@pytest.fixture(scope="module")
def tiny(checkpoint):
    return _loaded(checkpoint)


def test_the_tokenizer_s_yes_and_no_pieces_are_found(tiny):
    _, tokenizer, _ = tiny
    ids = parity.yes_no_ids(tokenizer)
    assert tokenizer.encode("Yes", add_special_tokens=False)[0] in ids["yes"]
    assert tokenizer.encode("No", add_special_tokens=False)[0] in ids["no"]
    assert not set(ids["yes"]) & set(ids["no"])


def test_random_weights_give_no_answer_so_the_check_does_not_bind(tiny):
    eager, tokenizer, image = tiny
    result = parity.answer_parity(eager, eager, tokenizer, image)
    assert result["answered"] == 0 and result["answer_agreement"] is None and result["margin_change"] is None
    assert len(result["prompts"]) == len(parity.yes_no_pairs()) == 12 and result["first_token_agreement"] == 1.0
    assert parity.judge("8da4w", {"exact_match": False, "token_agreement": 1.0, "logit_cosine": 1.0}, answers=result)[0]


def test_a_bundle_that_flips_every_answer_fails(tiny):
    eager, tokenizer, image = tiny
    no, yes = Biased(eager, tokenizer, "no", 2.0), Biased(eager, tokenizer, "yes", 2.0)
    result = parity.answer_parity(no, yes, tokenizer, image)
    assert result["answered"] == 12 and result["kept"] == 0 and result["margin_change"] == pytest.approx(2.0, abs=1e-4)
    ok, misses = parity.judge("q4_k_s", {"exact_match": False, "token_agreement": 1.0, "logit_cosine": 1.0}, answers=result)
    assert not ok and any("yes/no answer on 0 of 12" in m for m in misses)
    same = parity.answer_parity(no, no, tokenizer, image)
    assert same["kept"] == 12 and same["margin_change"] == pytest.approx(0.0, abs=1e-9)


def test_a_near_tie_pushed_towards_the_other_answer_fails_though_no_answer_flips_yet(tiny):
    """The defect of issue 17: the eager model says No by a small margin (0.1 nats); the bundle still says No, by
    0.03, so every per-step figure passes, but on other images such answers flip."""
    eager, tokenizer, image = tiny
    ref, got = Biased(eager, tokenizer, "no", 0.1), Biased(eager, tokenizer, "no", 0.03)
    result = parity.answer_parity(ref, got, tokenizer, image)
    assert result["answer_agreement"] == 1.0 and result["margin_change"] == pytest.approx(0.7, abs=1e-4)
    ok, misses = parity.judge("8da4w", {"exact_match": False, "token_agreement": 1.0, "logit_cosine": 1.0}, answers=result)
    assert not ok and misses == ["the bundle moves the eager model's yes/no logit margins by 0.70 of their width "
                                 f"(> {parity.MAX_MARGIN_CHANGE['8da4w']}), so near-tie yes/no answers flip"]


def test_an_export_whose_bundle_flips_the_answers_fails_in_one_sentence_and_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    """Through export_bundle: the eager reference answers No, the staged bundle Yes (every other figure is the real
    ONNX int8 bundle's); the export refuses, naming the answers and --allow-drift, and leaves no folder."""
    import alignkd.runtime.bundle as bundle_mod
    import alignkd.runtime.generation as generation
    from alignkd.export.api import export_bundle

    real_make, real_eager = bundle_mod.make_backend, generation.EagerBackend

    def eager_says_no(model):
        backend = real_eager(model)
        return Biased(backend, _tokenizer(), "no", 2.0)

    def bundle_says_yes(folder, manifest):
        return Biased(real_make(folder, manifest), _tokenizer(), "yes", 2.0)

    def _tokenizer():
        from alignkd.data.tokenizer import Tokenizer

        return Tokenizer.from_folder(checkpoint)

    monkeypatch.setattr(generation, "EagerBackend", eager_says_no)
    monkeypatch.setattr(bundle_mod, "make_backend", bundle_says_yes)
    with pytest.raises(AlignKDError, match=r"int8 bundle drifts from the eager model \(.*the bundle keeps the eager yes/no "
                                           r"answer on 0 of 12 prompts.*--allow-drift") as err:
        export_bundle(checkpoint, "onnx", "int8", tmp_path / "b", max_seq_len=512)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


def test_the_thresholds_in_the_manifest_name_the_answer_floors():
    t = parity.thresholds("8da4w")
    assert t["min_answer_agreement"] == parity.MIN_ANSWER_AGREEMENT["8da4w"]
    assert t["max_margin_change"] == parity.MAX_MARGIN_CHANGE["8da4w"]
    assert json.loads(json.dumps(t)) == t
    assert set(parity.MIN_ANSWER_AGREEMENT) == set(parity.MAX_MARGIN_CHANGE) == set(parity.MIN_TOKEN_AGREEMENT)


def test_a_bias_towards_the_eager_answer_counts_too(tiny):
    """A bundle that widens a No margin would flip the near-tie Yes answers of other images: it counts as a change."""
    eager, tokenizer, image = tiny
    result = parity.answer_parity(Biased(eager, tokenizer, "no", 0.1), Biased(eager, tokenizer, "no", 0.2), tokenizer, image)
    assert result["answer_agreement"] == 1.0 and result["margin_change"] == pytest.approx(1.0, abs=1e-4)
    assert not parity.judge("q8_0", {"exact_match": False, "token_agreement": 1.0, "logit_cosine": 1.0}, answers=result)[0]


def test_margin_of_a_prompt_is_answer_minus_the_best_opposite_piece(tiny):
    eager, tokenizer, image = tiny
    result = parity.answer_parity(Biased(eager, tokenizer, "yes", 0.5), eager, tokenizer, image)
    row = result["prompts"][0]
    assert row["answer"] == "yes" and row["eager_margin"] == pytest.approx(0.5, abs=1e-5)
    assert torch.isfinite(torch.tensor(row["bundle_margin"]))


def test_the_shipped_teacher_s_yes_no_answers_survive_the_default_4bit_scheme():
    """Trained weights (the shipped toy teacher): its decoder linears with the export's 8da4w config, in eager
    PyTorch. With the lm_head at int8 (the export's) the 4-bit floors pass, and the margins move no more than with
    it at int4. Measured: the previous shipped teacher, whose POPE answers were near ties, 0.056 (int8 lm_head)
    against 0.325 (int4: the bundle that flipped 11% of POPE); the grounded teacher shipped on 2026-12-01, whose
    answers are not near ties, 0.018 against 0.020, so the lm_head's bits matter little for it."""
    import copy

    from alignkd.export.quantize import quantize_decoder_linears
    from alignkd.models.checkpoint import load_checkpoint
    from alignkd.quickstart import SHIPPED_TEACHER
    from alignkd.runtime.generation import EagerBackend

    model, tokenizer = load_checkpoint(SHIPPED_TEACHER)
    eager, figures = EagerBackend(model), {}
    for name, head in (("int8 lm_head", "lm_head"), ("int4 lm_head", None)):
        bundle = copy.deepcopy(model)
        quantize_decoder_linears(bundle.llm, "8da4w", 32, lm_head=head)
        figures[name] = parity.answer_parity(eager, EagerBackend(bundle), tokenizer, model.config.image)
    new, old = figures["int8 lm_head"], figures["int4 lm_head"]
    assert new["answered"] == 12, "the shipped teacher answers the yes/no prompts with yes or no"
    ok, misses = parity.judge("8da4w", {"exact_match": False, "token_agreement": 1.0, "logit_cosine": 1.0}, answers=new)
    assert ok, misses
    assert old["answered"] == 12 and new["margin_change"] <= old["margin_change"], (old["margin_change"], new["margin_change"])
