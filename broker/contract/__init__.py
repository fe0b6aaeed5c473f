"""The work a frontend (or a direct client) asks of a worker, typed once for both ends:
each kind of request as the wire carries it, and the grammars of structured answers that a
frontend checks before admission and a worker enforces while decoding."""
