"""Policy tuning (``streamserve tune``) and placement search (``streamserve plan``).

Both are sweeps of simulations: ``space`` reads what may be tuned from the policies'
own ``SEARCH_SPACE`` declarations, ``evaluate`` runs one simulation (the one function
every runner executes), ``runners`` spreads those runs over a local process pool or a
Ray cluster, ``study`` drives Optuna for ``tune``, ``placement`` searches placements and
rates for ``plan``, ``report`` writes the files and plots, ``commands`` is the CLI.
"""
