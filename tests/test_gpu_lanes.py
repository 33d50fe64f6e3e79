"""Live lanes from engine metrics (read with prometheus_client's parser) and what the
front end has in flight; k from the engine's own spec-decode counters."""
from __future__ import annotations

import pytest

from streamserve.gpu.lanes import LANE_FAMILIES, LiveLane
from streamserve.gpu.telemetry import by_label, only, parse_metrics
from streamserve.lanes import LaneRole
from streamserve.request import Request, State

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.5
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="32",cache_dtype="auto",enable_prefix_caching="True",engine="0",kv_cache_dtype_skip_layers="['a', 'b=c']",num_cpu_blocks="None",num_gpu_blocks="2048"} 1.0
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="tiny"} 10.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="tiny"} 40.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="tiny"} 20.0
# TYPE vllm:prompt_tokens_by_source counter
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="external_kv_transfer"} 64.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="local_compute"} 11.0
"""


def test_engine_metrics_are_read_with_prometheus_clients_parser():
    m = parse_metrics(METRICS)
    assert m["vllm:num_requests_running"] == 3.0 and m["vllm:spec_decode_num_drafts_total"] == 10.0
    assert m['vllm:prompt_tokens_by_source_total{source="external_kv_transfer"}'] == 64.0
    assert m["vllm:prompt_tokens_by_source_total"] == 75.0  # summed over label sets
    assert m["vllm:cache_config_info:num_gpu_blocks"] == 2048 and "vllm:cache_config_info:num_cpu_blocks" not in m
    text = 'streamserve_spec_k{lane="1"} 4.0\nstreamserve_spec_k{lane="3"} 1.0\nother{lane="x"} 2.0\n'
    assert by_label(text, ["streamserve_spec_k", "other"], "lane") == {"streamserve_spec_k": {1: 4.0, 3: 1.0}, "other": {}}


def test_lane_stats_from_engine_metrics_and_front_end_in_flight():
    lane = LiveLane(lane_id=1, role=LaneRole.DECODE, url="http://x", max_num_seqs=8)
    lane.update(parse_metrics(METRICS))
    s = lane.stats()
    assert (s.num_running, s.num_waiting, s.kv_usage, s.acceptance_rate) == (3, 2, 0.5, 0.5)
    assert s.kv_free_tokens == 2048 * 32 // 2  # the cache's size comes from cache_config_info's labels
    assert s.spec_k == 4  # 40 draft tokens in 10 drafts
    assert LiveLane(lane_id=2, role=LaneRole.DECODE, url="http://x", max_num_seqs=8).stats().kv_free_tokens is None
    # 12 more drafts of 20 more tokens since the last scrape: the policy chose k = 1 and 2 lately
    lane.update(parse_metrics(METRICS.replace("40.0", "60.0").replace("20.0", "35.0").replace("} 10.0", "} 22.0")))
    assert lane.stats().acceptance_rate == pytest.approx(0.8 * 0.5 + 0.2 * (15 / 20))  # smoothed
    assert lane.spec_k == round(20 / 12)
    lane.update(parse_metrics(METRICS.replace("40.0", "60.0").replace("20.0", "35.0").replace("} 10.0", "} 22.0")))
    assert lane.spec_k == 2  # no new drafts: the last k stays
    for rid in range(7):  # sent by the front end, not yet seen by the engine's scrape
        lane.in_flight[rid] = Request(id=rid, arrival=0.0, prompt_len=100, output_len=10,
                                      state=State.TRANSFER if rid < 4 else State.DECODE)
    s = lane.stats()
    assert s.num_waiting == 2 + (7 - 5)
    assert (s.tokens_queued, s.context_tokens) == (400, 300)


def test_a_scrape_parses_only_the_families_a_lane_reads():
    noise = "".join(f'# HELP vllm:hist_{i} x\n# TYPE vllm:hist_{i} histogram\nvllm:hist_{i}_bucket{{le="1.0"}} 3.0\n'
                    for i in range(50))
    text = only(noise + METRICS, LANE_FAMILIES)
    assert "hist" not in text and "# TYPE vllm:num_requests_running gauge" in text
    assert parse_metrics(text) == {k: v for k, v in parse_metrics(METRICS).items() if "prompt_tokens" not in k}
