"""Submits one end-to-end pipeline to the Flink job server and waits for it.

Run by bench/e2e/run.py, one process per job, in the background; run.py cancels
the streaming job through the job service (ListJobs/CancelJob) when the output
is complete, which makes wait_until_finish() return here.

Variants (same Kafka topics, Flink job server and pipeline options):
  a  the seed: bench/e2e/seed/pipeline.py's init_pipeline() and run_pipeline(),
     its module constants set to this run's topics and consumer group. Java
     KafkaIO (Java expansion service, EMBEDDED) -> beam.Map(seed's
     worker.kafka_record_processor) in Beam's Python worker pool -> Java KafkaIO.
  b  the seed's pipeline with the Map replaced by our KvEcho: Java KafkaIO read
     -> KvEcho (our pool) -> Java KafkaIO write. Default environment EXTERNAL at
     our pool (nothing Python is left in the pipeline).
  c  our read -> KvEcho -> our write: one fused stage in our pool.
  d  the seed as in (a) with only the pool swapped: its EXTERNAL environment is
     our pool, which runs the Map in a delegated Python SDK worker.
"""

import argparse
import logging
import os
import sys
import typing

HERE = os.path.dirname(os.path.abspath(__file__))


def seed_options(job_server, pool, extra):
    """The seed's init_pipeline() options, with the pool and extra options."""
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
    opts = {
        "runner": "PortableRunner",
        "job_name": "kafka_echo_demo",
        "job_endpoint": f"{job_server}:8099",
        "artifact_endpoint": f"{job_server}:8098",
        "environment_type": "EXTERNAL",
        "environment_config": pool,
        "streaming": True,
        "parallelism": 2,
        "experiments": ["use_deprecated_read"],
        "checkpointing_interval": "60000",
    }
    options = PipelineOptions(extra, **opts)
    options.view_as(SetupOptions).save_main_session = True
    return options


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices="abcd", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input-topic", required=True)
    ap.add_argument("--output-topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--job-name", required=True)
    ap.add_argument("--java-expansion", default="localhost:8096")
    ap.add_argument("--rust-expansion", required=True)
    ap.add_argument("--rust-pool", required=True)
    ap.add_argument("--idle-ms", type=int, default=5000,
                    help="(c) --shutdown_sources_after_idle_ms")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.INFO)

    import apache_beam as beam

    if args.variant in ("a", "d"):
        sys.path.insert(0, os.path.join(HERE, "seed"))
        import pipeline as seed  # bench/e2e/seed/pipeline.py
        seed.bootstrap_servers = args.bootstrap
        seed.kafka_consumer_group_id = args.group
        seed.input_topic = args.input_topic
        seed.output_topic = args.output_topic
        seed.expansion_service = args.java_expansion
        p = seed.init_pipeline()
        from apache_beam.options.pipeline_options import GoogleCloudOptions, PortableOptions
        p.options.view_as(GoogleCloudOptions).job_name = args.job_name
        if args.variant == "d":
            p.options.view_as(PortableOptions).environment_config = args.rust_pool
        seed.run_pipeline(p)  # blocks until the job is cancelled
        return

    from apache_beam.io import kafka
    from beam_rust_worker import KvEcho
    from beam_rust_worker import kafka as rkafka

    if args.variant == "b":
        options = seed_options("localhost", args.rust_pool, [])
    else:
        options = seed_options("localhost", args.rust_pool, [
            f"--shutdown_sources_after_idle_ms={args.idle_ms}"])
    options.view_as(beam.options.pipeline_options.GoogleCloudOptions).job_name = args.job_name
    p = beam.Pipeline(options=options)
    consumer = {"bootstrap.servers": args.bootstrap, "group.id": args.group,
                "auto.offset.reset": "earliest"}
    if args.variant == "b":
        _ = (p
             | "ReadMessages" >> kafka.ReadFromKafka(
                 consumer_config=consumer, topics=[args.input_topic],
                 expansion_service=args.java_expansion)
             | "KvEcho" >> KvEcho(expansion_service=args.rust_expansion)
             | "WriteToKafka" >> kafka.WriteToKafka(
                 producer_config={"bootstrap.servers": args.bootstrap},
                 topic=args.output_topic, expansion_service=args.java_expansion))
    else:
        _ = (p
             | "ReadMessages" >> rkafka.ReadFromKafka(
                 consumer_config=consumer, topics=[args.input_topic],
                 commit_offset_in_finalize=True,
                 # The backlog scenario reads what is there and ends.
                 stop_at_end=True,
                 expansion_service=args.rust_expansion)
             | "KvEcho" >> KvEcho(expansion_service=args.rust_expansion)
             | "WriteToKafka" >> rkafka.WriteToKafka(
                 producer_config={"bootstrap.servers": args.bootstrap},
                 topic=args.output_topic, expansion_service=args.rust_expansion))
    p.run().wait_until_finish()


if __name__ == "__main__":
    main()
