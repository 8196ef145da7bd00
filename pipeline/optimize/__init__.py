"""The engine search: a Hydra multirun over build and run settings (any sweeper, any launcher), ending in one
comparison with the throughput / latency Pareto front and the pick (:mod:`.pareto`)."""
