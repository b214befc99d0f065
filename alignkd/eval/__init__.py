"""alignkd.eval: readers and scorers for the six VLM benchmarks (GQA, ScienceQA-IMG, TextVQA, MME,
MMBench, POPE) in LLaVA's playground/data/eval layout, scoring exactly as the reference scripts do.

Entry points: `alignkd.eval.registry.get_benchmark(name)`; shared types in `alignkd.eval.common`.
No torch import anywhere in this package.
"""
