"""ServerConfig: flags win over AEGEN_* variables, which win over defaults; bad values are refused clearly."""

from __future__ import annotations

import pytest

from server.config import ConfigError, ServerConfig, flag_table, setting_fields


def test_defaults_are_the_documented_ones():
    config = ServerConfig.from_args([], {})
    core = config.core
    assert (core.repository, config.grpc.port, config.metrics.metrics_port, core.device) == (
        "/models", 50051, 9464, "auto")
    assert (core.max_batch_size, core.max_queue_delay_us, core.max_queue_samples) == (8192, 0, 262144)
    assert (core.max_samples_per_request, core.max_samples_per_stream) == (65536, 4194304)
    assert (config.process.log_format, core.cudnn_conv_algo_search, config.process.workers, core.cuda_graphs) == (
        "json", "HEURISTIC", 1, False)

def test_flag_wins_over_environment_which_wins_over_default():
    env = {"AEGEN_PORT": "6000", "AEGEN_MAX_BATCH_SIZE": "512", "AEGEN_MODELS": "a, b", "AEGEN_CUDA_GRAPHS": "true"}
    config = ServerConfig.from_args(["--port", "7000", "--device", "cpu", "--no-cuda-graphs"], env)
    assert (config.grpc.port, config.core.max_batch_size, config.core.models, config.core.cuda_graphs) == (
        7000, 512, ("a", "b"), False)

def test_flag_table_lists_every_field_with_its_environment_variable():
    table = flag_table()
    assert [flag for flag, _, _ in table] == ["--" + f.name.replace("_", "-")
                                              for f in setting_fields()]
    rows = {flag: (env, default) for flag, env, default in table}
    assert rows["--max-queue-delay-us"] == ("AEGEN_MAX_QUEUE_DELAY_US", "0")
    assert rows["--tls-cert"] == ("AEGEN_TLS_CERT", "")
    assert rows["--cuda-graphs"] == ("AEGEN_CUDA_GRAPHS", "off")

@pytest.mark.parametrize("argv, env, words", [
    (["--port", "70000"], {}, "--port"),
    (["--max-batch-size", "0"], {}, "--max-batch-size"),
    ([], {"AEGEN_MAX_QUEUE_DELAY_US": "soon"}, "AEGEN_MAX_QUEUE_DELAY_US"),
    (["--device", "tpu"], {}, "--device"),
    (["--tls-cert", "cert.pem"], {}, "--tls-key"),
    (["--max-queue-samples", "10"], {}, "--max-queue-samples"),
    (["--grace-seconds", "nan"], {}, "--grace-seconds"),
    (["--device", "cpu", "--gpu-mem-limit", "1000"], {}, "--gpu-mem-limit"),
    (["--workers", "0"], {}, "--workers"),
    (["--event-loop", "trio"], {}, "--event-loop"),
    (["--workers", "2", "--port", "0"], {}, "--workers"),
    (["--no-such-flag"], {}, "--no-such-flag"),
])
def test_bad_values_raise_config_error_naming_the_setting(argv, env, words):
    with pytest.raises(ConfigError, match=words):
        ServerConfig.from_args(argv, env)

def test_message_limit_fits_the_largest_float32_answer():
    config = ServerConfig.from_args(["--max-samples-per-request", "1000"], {})
    assert config.max_message_bytes() >= 1000 * 784 * 4 + 1000 * 16 * 4
    assert ServerConfig.from_args([], {}).max_message_bytes() <= 2**31 - 1

def test_docs_list_every_flag_with_its_variable_and_default():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()
    for flag, env, default in flag_table():
        assert f"| `{flag}` | `{env}` | `{default}` |" in doc, flag
