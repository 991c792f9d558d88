"""Exit codes of every tracer command:

  0  done (for tree and replay: and every line of the input was read)
  1  failure: the daemon could not start or stopped on an error; no input
     could be read; the daemon could not be reached or refused a request
  2  bad usage: an unknown flag, a malformed value, a setting the daemon
     cannot run with, an invalid policy
  3  (tree, replay) done, but some input was skipped (torn last line,
     corrupt or truncated segment, a line that is not JSON, an event of a
     newer schema): the output is partial, the warnings on stderr say where
  4  (tree) no process in the log matches the selection
"""

from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
PARTIAL = 3
NO_MATCH = 4
