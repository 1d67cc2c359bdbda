"""The command line's piped output takes its width from an exported COLUMNS (``cli.app._console``, read when bsprof
is imported): a developer's exported COLUMNS would re-wrap the messages tests read, so the tests run without one (a
test that wants it passes it to a subprocess)."""

import os

os.environ.pop("COLUMNS", None)
