"""The benchmark registry: a plain dict from name to `Benchmark`, with a loud lookup.

    from alignkd.eval.registry import get_benchmark
    result = get_benchmark("pope").score_file("playground/data/eval", "answers/pope.jsonl")
"""

from __future__ import annotations

from alignkd.errors import AlignKDError
from alignkd.eval import gqa, mmbench, mme, pope, sqa, textvqa
from alignkd.eval.common import Benchmark

BENCHMARKS: dict[str, Benchmark] = {
    "gqa": gqa.BENCHMARK,
    "sqa": sqa.BENCHMARK,
    "textvqa": textvqa.BENCHMARK,
    "mme": mme.BENCHMARK,
    "mmbench": mmbench.BENCHMARK,
    "pope": pope.BENCHMARK,
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`; an unknown name fails listing the valid ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise AlignKDError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}.") from None
