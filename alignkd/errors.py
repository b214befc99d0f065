"""The one exception type for mistakes a user can make (bad path, bad config, corrupt file, wrong pair).

The CLI turns it into a one-line message and a non-zero exit instead of a traceback; library callers
can catch it. The message always names the offending input and says how to fix it.
"""


class AlignKDError(Exception):
    """A user-facing error: `str(err)` is one sentence naming the input and the fix."""
