"""How fast does the toy teacher's language model learn POPE's comparison when the scene is compact text?

The quickstart's toy teacher learns to *read* its image quickly (the colour of a lone object: under 100
steps, `toy_grounding.py`) but not to *compare* a question's object with the scene ("Is there a red
circle?"): hundreds of steps at chance. This probe separates the two costs. It trains a LLaMA of the toy
teacher's shape (4 layers, 256 wide, 8 heads) from scratch on the existence question in the most compact
text possible: a vocabulary of the world's 4 colours and 3 shapes plus 4 marks, the scene as colour/shape
token pairs, then the asked pair and "?", the answer Yes/No at the last position (half present, half
absent, 1-4 objects). `--filler N` puts N neutral tokens between the scene and the question and N after it,
as the v1 template's instruction and role words do. Prints one JSON object: settings and the held-out
accuracy every `--eval-every` steps.

    python benchmarks/toy_compare_text.py --steps 300                # compact: see docs/quickstart.md
    python benchmarks/toy_compare_text.py --steps 300 --filler 15    # the same, 15 filler tokens around the question
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

COLORS, SHAPES = 4, 3
PAD, BOS = 0, 1
QMARK, SEP, YES, NO = 2 + COLORS + SHAPES, 3 + COLORS + SHAPES, 4 + COLORS + SHAPES, 5 + COLORS + SHAPES
VOCAB = NO + 1


def example(rng: random.Random, filler: int) -> tuple[list[int], int]:
    """(tokens, answer id): a scene of 1-4 distinct objects, then a question about a present or an absent one."""
    classes = [(c, s) for c in range(COLORS) for s in range(SHAPES)]
    objects = rng.sample(classes, rng.randint(1, 4))
    if rng.random() < 0.5:
        asked, answer = rng.choice(objects), YES
    else:
        asked, answer = rng.choice([o for o in classes if o not in objects]), NO
    scene = [t for c, s in objects for t in (2 + c, 2 + COLORS + s)]
    return [BOS, *scene, SEP, *[SEP] * filler, 2 + asked[0], 2 + COLORS + asked[1], QMARK, *[SEP] * filler], answer


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--filler", type=int, default=0, help="neutral tokens before and after the question")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--val", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64,
                                         rms_norm_eps=1e-5))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def batch(examples):
        width = max(len(t) for t, _ in examples)
        ids = torch.full((len(examples), width), PAD, dtype=torch.long)
        for i, (tokens, _) in enumerate(examples):
            ids[i, :len(tokens)] = torch.tensor(tokens)
        last = torch.tensor([len(t) - 1 for t, _ in examples])
        return ids, last, torch.tensor([a for _, a in examples])

    val_ids, val_last, val_y = batch([example(random.Random(f"{args.seed}/val/{i}"), args.filler) for i in range(args.val)])
    rng, curve, t0 = random.Random(f"{args.seed}/train"), [], time.perf_counter()
    rows = torch.arange(args.val)
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                logits = model(input_ids=val_ids).logits[rows, val_last][:, [YES, NO]]
            acc = (logits.argmax(-1) == (val_y == NO).long()).float().mean().item()
            curve.append({"step": step, "acc": round(acc, 4), "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
        if step == args.steps:
            break
        ids, last, y = batch([example(rng, args.filler) for _ in range(args.batch)])
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[torch.arange(len(y)), last], y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    result = {**vars(args), "majority_acc": round(max((val_y == YES).float().mean().item(), (val_y == NO).float().mean().item()), 4),
              "curve": curve}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
