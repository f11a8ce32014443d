"""Benchmarks: ``python -m benchmarks`` runs every benchmark (each in its own process) and prints one table.

Convention (how a file here becomes part of the table):

* A benchmark is a module ``benchmarks/<name>.py`` (name not starting with ``_``) that defines
  ``run(tiny: bool = False) -> list[dict[str, object]]``. Modules without ``run`` (e.g.
  ``affinity_acceptance.py``, which reads a run's output) are listed as skipped.
* ``run`` returns table rows, each a dict with the keys ``benchmark`` (its name), ``setting``
  (what was measured), ``value`` (a number), ``unit`` (e.g. ``"ms/step"``), ``ratio`` (``value``
  over the benchmark's own baseline row, which has ratio 1.0; ``None`` when there is no
  baseline) and optionally ``note`` (a short string).
* Ratios are taken within one run (alternating trials), never against numbers from another
  machine or time; ``tiny=True`` must finish in seconds (it is what the tests run) and its
  numbers mean nothing.
* Each module keeps its own ``main()`` / ``if __name__ == "__main__"`` for detailed use.

The runner runs each benchmark in a fresh child process, sets its torch CPU thread count
(``--threads``, default 1: less noise on a shared machine) and records, per benchmark, the wall
time, that process's peak resident memory (``getrusage``) and, on CUDA, the peak allocated GPU
memory; the header states the machine
(CPU model, cores, GPU, Python, torch, Lightning, torchmetrics versions) and the date.
"""
