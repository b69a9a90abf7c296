"""The exit codes of every `videobert` command, and the help text that explains them.

One table, at the top of the package, because two layers need it: the click commands exit with
these codes, and `extract/session.py` computes a run's code (the gravest of its ranks') from them.
Neither imports the other for it, so the library never depends on the command line. The help
epilogs are written here, next to the numbers they explain, so the two cannot drift apart.
"""

from __future__ import annotations

import signal

EXIT_OK = 0  # everything asked for is done
EXIT_FAILED = 1  # the run went through but some of it failed (videos; training diverged, ...)
EXIT_USAGE = 2  # usage, config, model or input error: nothing was done
EXIT_OUTPUT = 3  # the output could not be written: what was completed is intact
EXIT_LOCKED = 75  # another run holds the output folder (EX_TEMPFAIL: try again later)
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's convention; SIGTERM gives 128 + 15 = 143
EXIT_TERMINATED = 128 + signal.SIGTERM

EXTRACT_HELP = f"""\b
Exit codes:
  {EXIT_OK:<4} everything asked for is done (new videos extracted, the rest already were)
  {EXIT_FAILED:<4} some videos failed, now or in an earlier run (see OUT/failures.jsonl,
       --retry-failed); the others were written
  {EXIT_USAGE:<4} usage, config or model error: nothing was extracted
  {EXIT_OUTPUT:<4} the output could not be written (disk full, permissions): completed
       shards are intact, rerun to finish
  {EXIT_LOCKED:<4} another run holds the output folder, or this part of it
       (--num-shards, torchrun: see the README; use --wait to queue)
  {EXIT_INTERRUPTED:<4} interrupted by SIGINT, {EXIT_TERMINATED} by SIGTERM: finished videos were written,
       rerun to finish"""

LEARN_HELP = f"""\b
Exit codes:
  {EXIT_OK}  done
  {EXIT_FAILED}  the run failed (loss diverged, output not writable, out of memory)
  {EXIT_USAGE}  usage error: bad options, features lacking frame/token features,
     a checkpoint trained on features of other models, or a malformed one"""
