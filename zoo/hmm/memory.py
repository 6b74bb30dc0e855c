"""The HMM family's memory estimate: :func:`hmm_fit_memory`, the peak memory of an EM or
SVI fit from the number of states, the emission's size and the batch's sizes alone (no
tensor is made), as a :class:`inference.memory.MemoryEstimate` by part (the ``K²`` chain,
the emissions, the ``N·T·K`` messages). The command line checks it against the free memory
(:func:`inference.memory.check_memory`) before the model is built, so ``--states 100000``
is refused by its size."""

from __future__ import annotations

from inference.memory import MemoryEstimate, check_count


def hmm_fit_memory(
    num_states: int,
    *,
    num_symbols: int | None = None,
    emission_parameters_per_state: int | None = None,
    batch_sequences: int,
    batch_steps: int,
    method: str = "em",
    parameter_bytes: int = 4,
    parallel_scan: bool = False,
) -> MemoryEstimate:
    """Peak memory of fitting an HMM with ``K = num_states`` states.

    What is counted (bytes of the arrays alive at once at the peak):

    * the chain, ``K + K²``: parameters in ``parameter_bytes``, their
      probabilities, and six float64 ``(K, K)`` arrays of the E-step (log and
      scaled potentials, their transpose, the posterior counts and the M-step's
      copies), plus one ``(K, K)`` count per sequence of the batch (summed after);
    * the emissions, ``K·V`` (categorical, ``V = num_symbols``) or ``K·P``
      (``P = emission_parameters_per_state``), as parameters, probabilities and
      float64 statistics;
    * per batch, ``N·T·K`` (``N`` sequences of ``T`` steps): the float64 log-emissions,
      scaled potentials, forward messages, posterior marginals and the
      responsibilities handed to the M-step (five arrays); by SVI, the autograd
      graph keeps about as many again, and the parameters need a gradient and two
      Adam moments;

    Measured on the CPU (tests/zoo/test_hmm_memory.py), the peak of one EM
    iteration lies between 70% and 100% of this estimate.
    * with ``parallel_scan`` (the associative scan on a GPU), four
      ``N·T·K²`` temporaries.

    Args:
        num_states: K.
        num_symbols: V for categorical emissions.
        emission_parameters_per_state: the emission parameters of one state
            otherwise (a D-dimensional Gaussian: ``2D``, or ``D + D²``).
        batch_sequences, batch_steps: N and T of the largest batch the fit scores.
        method: ``"em"`` or ``"svi"``.
        parameter_bytes: bytes per parameter (4 for float32, 8 for float64).
        parallel_scan: count the parallel scan's ``N·T·K²`` temporaries.

    Returns:
        The estimate, by part.
    """
    k = check_count("num_states", num_states, 1)
    n = check_count("batch_sequences", batch_sequences, 1)
    t = check_count("batch_steps", batch_steps, 0)
    if (num_symbols is None) == (emission_parameters_per_state is None):
        raise ValueError("hmm_fit_memory: give exactly one of num_symbols and emission_parameters_per_state")
    per_state = check_count(
        "num_symbols" if num_symbols is not None else "emission_parameters_per_state",
        num_symbols if num_symbols is not None else emission_parameters_per_state,
        1,
    )
    if method not in ("em", "svi"):
        raise ValueError(f"method: expected 'em' or 'svi', got {method!r}")
    # Parameters, their probabilities, and (SVI) a gradient and two Adam moments, in parameter_bytes;
    # float64 log-potentials and statistics for the E-step.
    copies = 2 + (3 if method == "svi" else 0)
    chain = k + k * k
    parts = {
        "transition (K²)": chain * copies * parameter_bytes + (k * k) * 8 * (6 + n) + k * 8,
        "emission (K·V)" if num_symbols is not None else "emission (K·P)": k
        * per_state
        * (copies * parameter_bytes + 2 * 8),
        "messages (N·T·K per batch)": n * t * k * 8 * (5 if method == "em" else 10),
    }
    if parallel_scan:
        parts["parallel scan (N·T·K²)"] = 4 * n * t * k * k * parameter_bytes
    emission = f"{num_symbols:,} symbols" if num_symbols is not None else f"{per_state} emission parameters per state"
    return MemoryEstimate(
        parts, f"an HMM with {k:,} states and {emission} on a batch of {n:,} x {t:,} steps ({method.upper()})"
    )
