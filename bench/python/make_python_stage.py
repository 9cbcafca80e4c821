"""Writes the ProcessBundleDescriptor the load driver sends to Beam's Python worker pool.

The stage is what a Beam runner would send for a Python KV identity step:
``beam:runner:source:v1`` -> ``Map(lambda kv: kv)`` (a pickled Python DoFn) ->
``beam:runner:sink:v1``. The Map, its PCollections, coders, windowing strategy and
environment come from a real apache-beam pipeline (``Pipeline.to_runner_api``), so
the pickled DoFn is made by the installed SDK at bench time, not copied. The data
ports use the wire coder a runner builds: ``windowed_value(<element coder>,
<window coder>)``. Their URL is a placeholder the load driver replaces with its own
data endpoint.

Usage: python make_python_stage.py --out FILE [--nullable]
"""

import argparse
import sys

import apache_beam as beam
from apache_beam import typehints as th
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.portability.api import endpoints_pb2

PLACEHOLDER_URL = "placeholder:0"
WIRE_CODER_ID = "bench_wire_coder"
SOURCE_ID = "bench/read"
SINK_ID = "bench/write"
MAP_LABEL = "IdentityMap"


def build(nullable: bool) -> beam_fn_api_pb2.ProcessBundleDescriptor:
    part = th.Optional[bytes] if nullable else bytes
    kv = th.Tuple[part, part]
    p = beam.Pipeline()
    seed = (
        p
        | "Seed" >> beam.Create([(b"k", b"v")]).with_output_types(kv)
    )
    _ = seed | MAP_LABEL >> beam.Map(lambda element: element).with_output_types(kv)
    pipeline = p.to_runner_api()
    comps = pipeline.components

    map_id, map_t = next(
        (tid, t) for tid, t in comps.transforms.items() if t.unique_name == MAP_LABEL
    )
    if map_t.spec.urn != common_urns.primitives.PAR_DO.urn:
        raise SystemExit(f"{MAP_LABEL} is {map_t.spec.urn}, expected a ParDo")
    (in_pc,) = map_t.inputs.values()
    (out_pc,) = map_t.outputs.values()

    pbd = beam_fn_api_pb2.ProcessBundleDescriptor(id="python-identity-map")

    def copy_coder(cid):
        if cid in pbd.coders:
            return
        c = comps.coders[cid]
        pbd.coders[cid].CopyFrom(c)
        for comp in c.component_coder_ids:
            copy_coder(comp)

    for pc in (in_pc, out_pc):
        pcoll = comps.pcollections[pc]
        pbd.pcollections[pc].CopyFrom(pcoll)
        copy_coder(pcoll.coder_id)
        ws = comps.windowing_strategies[pcoll.windowing_strategy_id]
        pbd.windowing_strategies[pcoll.windowing_strategy_id].CopyFrom(ws)
        copy_coder(ws.window_coder_id)
    pbd.transforms[map_id].CopyFrom(map_t)
    if map_t.environment_id:
        pbd.environments[map_t.environment_id].CopyFrom(
            comps.environments[map_t.environment_id]
        )

    in_pcoll = comps.pcollections[in_pc]
    window_coder = comps.windowing_strategies[in_pcoll.windowing_strategy_id].window_coder_id
    pbd.coders[WIRE_CODER_ID].CopyFrom(
        beam_runner_api_pb2.Coder(
            spec=beam_runner_api_pb2.FunctionSpec(
                urn=common_urns.coders.WINDOWED_VALUE.urn
            ),
            component_coder_ids=[in_pcoll.coder_id, window_coder],
        )
    )

    def port_transform(transform_id, urn, **pcollections):
        port = beam_fn_api_pb2.RemoteGrpcPort(
            api_service_descriptor=endpoints_pb2.ApiServiceDescriptor(url=PLACEHOLDER_URL),
            coder_id=WIRE_CODER_ID,
        ).SerializeToString()
        pbd.transforms[transform_id].CopyFrom(
            beam_runner_api_pb2.PTransform(
                unique_name=transform_id,
                spec=beam_runner_api_pb2.FunctionSpec(urn=urn, payload=port),
                **pcollections,
            )
        )

    port_transform(SOURCE_ID, "beam:runner:source:v1", outputs={"out": in_pc})
    port_transform(SINK_ID, "beam:runner:sink:v1", inputs={"in": out_pc})
    return pbd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="file to write the serialized descriptor to")
    parser.add_argument(
        "--nullable",
        action="store_true",
        help="KafkaIO's element coder kv(nullable(bytes), nullable(bytes)) instead of kv(bytes, bytes)",
    )
    args = parser.parse_args()
    pbd = build(args.nullable)
    with open(args.out, "wb") as f:
        f.write(pbd.SerializeToString())
    coder = pbd.coders[pbd.coders[WIRE_CODER_ID].component_coder_ids[0]]
    print(
        f"wrote {args.out}: {len(pbd.transforms)} transforms, element coder {coder.spec.urn}"
        f"{[pbd.coders[c].spec.urn for c in coder.component_coder_ids]}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
