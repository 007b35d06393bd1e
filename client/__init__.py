"""The client side of aegen.v1.GeneratorService: everything that talks to a running server.

| module | owns |
|---|---|
| client/client.py | `AegenClient` (numpy in and out), `default_model_name()`: the one model default |
| client/flags.py | the flags every client command line shares (`--target`, `--model`, `--tls`, `--ca`, `--sampler`) |
| client/sample.py | `aegen-sample`: a PNG grid (and .npy) of samples |
| client/loadtest/ | `aegen-loadtest`: load levels, Prometheus scrape, reports and plots |
| client/local.py | a server process on this machine: a free port, waiting until SERVING |
| client/demo.py | the serving half of `make demo` |

Sampler and dtype names come from protos/aegen/v1/names.py: tools accept `standard-normal` and
`standard_normal` and print the latter.
"""

from client.client import AegenClient, Encoding, ModelSummary, NoModelsError, Samples, default_model_name

__all__ = ["AegenClient", "Encoding", "ModelSummary", "NoModelsError", "Samples", "default_model_name"]
