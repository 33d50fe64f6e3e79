"""Calibration: fit the simulator's step model to live engines and measure its fidelity.

Three commands, one module each behind them: ``profile`` (``profile.py``: drive live
engines through a grid, ``grid.py``, and keep every engine step, ``records.py``),
``calibrate`` (``fit.py``: least squares on the step model of ``streamserve.perfmodel``)
and ``fidelity`` (``fidelity.py``: one workload live and simulated, compared by
``report.py``). ``live.py`` is the only module that touches the live runtime.
"""
