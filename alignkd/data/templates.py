"""Conversation templates (`v1` = Vicuna, `plain`), prompt tokenization with the image placeholder, and the
official training label masks.

Everything here reproduces MobileVLM's `conversation.py`, `utils.tokenizer_image_token` and `train.py`
(`preprocess_multimodal`, `preprocess_v1`, `preprocess_plain`) exactly, quirks included (the `- 2` in the v1
instruction length, BOS counted in place of each `</s>` separator), because the training labels and the
prompt ids must be identical to the official ones. Checked by `tests/data/test_templates.py` against the
fixture produced by the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkd.errors import AlignKDError

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    """One conversation template. `style` is "two" (Vicuna, SeparatorStyle.TWO) or "plain"."""

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str | None
    style: str

    @property
    def stop_str(self) -> str:
        return self.sep2 if self.style == "two" else self.sep

    def render(self, messages: list[tuple[str, str | None]]) -> str:
        """`Conversation.get_prompt()`: messages are (role, text) pairs; text None leaves the turn open."""
        seps = [self.sep, self.sep2]
        if self.style == "two":
            out = self.system + seps[0]
            for i, (role, text) in enumerate(messages):
                out += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
            return out
        out = self.system
        for i, (_, text) in enumerate(messages):
            if text:
                out += text + (seps[i % 2] or "")
        return out

    def prompt(self, user_message: str) -> str:
        """A single-turn inference prompt: the user message and an open assistant turn."""
        return self.render([(self.roles[0], user_message), (self.roles[1], None)])


TEMPLATES: dict[str, Template] = {
    "v1": Template("v1", VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>", "two"),
    "plain": Template("plain", "", ("", ""), "\n", None, "plain"),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise AlignKDError(f"unknown conversation template {name!r}; valid templates: {', '.join(TEMPLATES)}") from None


def user_message(question: str, n_images: int) -> str:
    """The user turn as the official inference and eval scripts build it: `<image>\\n` + question.

    A question that already contains `<image>` is kept as written (the caller chose the position).
    """
    if IMAGE_TOKEN in question or n_images == 0:
        return question
    return (IMAGE_TOKEN + "\n") * n_images + question


def tokenize_with_image(prompt: str, tokenizer) -> list[int]:
    """`tokenizer_image_token`: each `<image>`-separated chunk tokenized alone, BOS kept only once, -200 between."""
    chunks = [tokenizer(chunk) for chunk in prompt.split(IMAGE_TOKEN)]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_id:
        offset = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i > 0:
            # The official separator is [-200] * (offset + 1) with its first element dropped by the same
            # offset slice, leaving exactly one placeholder.
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def normalize_image_turns(conversations: list[dict]) -> list[dict]:
    """`preprocess_multimodal`: a turn holding `<image>` gets it moved to the front, followed by a newline."""
    out = []
    for turn in conversations:
        value = turn["value"]
        if IMAGE_TOKEN in value:
            value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        out.append({**turn, "value": value})
    return out


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    prompt: str
    mismatch: bool = False  # the official length bookkeeping disagreed: every label was masked


def _tokenize(text: str, tokenizer, has_image: bool) -> list[int]:
    return tokenize_with_image(text, tokenizer) if has_image else tokenizer(text)


def tokenize_conversation(conversations: list[dict], template: str | Template, tokenizer, has_image: bool) -> TokenizedExample:
    """Input ids and labels for one LLaVA-format conversation, exactly as the official dataset returns them.

    `conversations` are `{"from": "human"|"gpt", "value": ...}` turns, already normalised with
    `normalize_image_turns` when the sample has an image.
    """
    tpl = get_template(template) if isinstance(template, str) else template
    if tpl.style == "plain":
        return _tokenize_plain(conversations, tpl, tokenizer)
    roles = {"human": tpl.roles[0], "gpt": tpl.roles[1]}
    turns = conversations[1:] if roles.get(conversations[0]["from"]) != tpl.roles[0] else conversations
    messages = []
    for j, turn in enumerate(turns):
        role = roles.get(turn["from"])
        if role != tpl.roles[j % 2]:
            raise AlignKDError(f"conversation turn {j} is from {turn['from']!r}; turns must alternate human/gpt")
        messages.append((role, turn["value"]))
    prompt = tpl.render(messages)
    input_ids = _tokenize(prompt, tokenizer, has_image)
    labels = list(input_ids)
    total_len = sum(1 for i in input_ids if i != tokenizer.pad_id)

    sep = tpl.sep + tpl.roles[1] + ": "
    cur_len = 1
    labels[:cur_len] = [IGNORE_INDEX] * cur_len
    for rou in prompt.split(tpl.sep2):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(_tokenize(rou, tokenizer, has_image))
        # The official "- 2" drops BOS and the lone "▁" that the trailing space of "ASSISTANT: " becomes.
        instruction_len = len(_tokenize(parts[0], tokenizer, has_image)) - 2
        end = min(cur_len + instruction_len, len(labels))
        labels[cur_len:end] = [IGNORE_INDEX] * max(0, end - cur_len)
        cur_len += round_len
    labels[cur_len:] = [IGNORE_INDEX] * max(0, len(labels) - cur_len)
    mismatch = cur_len < tokenizer.model_max_length and cur_len != total_len
    if mismatch:
        labels = [IGNORE_INDEX] * len(labels)
    return TokenizedExample(input_ids, labels, prompt, mismatch)


def _tokenize_plain(conversations: list[dict], tpl: Template, tokenizer) -> TokenizedExample:
    """`preprocess_plain`: `<image>` + caption + `\\n`, loss on the caption only."""
    if len(conversations) != 2 or IMAGE_TOKEN not in conversations[0]["value"]:
        raise AlignKDError("the plain template takes exactly two turns, the first holding <image> (image-caption pairs)")
    prompt = IMAGE_TOKEN + conversations[1]["value"] + tpl.sep
    input_ids = tokenize_with_image(prompt, tokenizer)
    n_masked = len(tokenize_with_image(IMAGE_TOKEN, tokenizer))
    labels = [IGNORE_INDEX] * n_masked + input_ids[n_masked:]
    return TokenizedExample(input_ids, labels, prompt)
