"""Decision code shared by both runtimes: no clock, no I/O, no SimPy, no asyncio."""
