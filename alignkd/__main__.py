"""`python -m alignkd ...` (what `accelerate launch -m alignkd distill ...` runs): the same CLI as `alignkd`."""

from alignkd.cli import main

main()
