"""Every model family the command line offers: importing this module registers them.

Each family module registers its own entries in :data:`zoo.registry.REGISTRY`
at its bottom; this is the one place that names them all (``docs/families.md``).
Only the command line imports it, so no family ever imports another through it.
A new family adds one line here (its order is the order of ``seqzoo fit --help``).
"""

import zoo.dmm  # noqa: F401
import zoo.dtm  # noqa: F401  (dtm and lda)
import zoo.hmm  # noqa: F401  (imported for its registration)
import zoo.lgssm  # noqa: F401
import zoo.rnn  # noqa: F401
