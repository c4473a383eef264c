"""The core layer: what every other part of rfbench builds on, and which imports nothing above it.

* :mod:`~rfbench.core.errors`: the user-facing error types (one line each on the command line);
* :mod:`~rfbench.core.config`: typed dataclass configs, strict validation, ``key=value`` overrides;
* :mod:`~rfbench.core.registry`: the name → object registries (datasets, models, defenses, attacks, losses);
* :mod:`~rfbench.core.plugins`: importing a plugin named on the command line (``file.py:Name`` or ``pkg.mod:Name``);
* :mod:`~rfbench.core.perclass`: the one definition of per-class statistics and their intervals;
* :mod:`~rfbench.core.threat`: the threat model (:class:`~rfbench.core.threat.Threat`) and its resolution rule;
* :mod:`~rfbench.core.io`: atomic writes, locks and safe checkpoint loading.

``tests/test_layers.py`` enforces the layering.
"""
