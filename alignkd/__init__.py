"""alignkd: distil a MobileVLM teacher into a phone-sized student (Align-KD), export it, profile and evaluate it.

Run `alignkd --help` for the stages.
"""

__version__ = "0.1.0"

from alignkd import _noise

_noise.install()
