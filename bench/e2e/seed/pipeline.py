# pipeline.py
#
# Copy of /work/shared/seed/pipeline.py (the seed). The only changes are marked
# CHANGED: the Kafka host (localhost instead of host.docker.internal) and
# auto.offset.reset=earliest. Every port is the seed's own (8099, 8098, 8096,
# 50000, 9092): scripts/seed-baseline.sh and bench/e2e/run.py start the services
# on exactly those ports.

# Sample Beam Program that uses Kafka for I/O.
# Set up to run locally for now. See steps below for preparing your runtime environment.

import apache_beam as beam
from apache_beam.io import kafka
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
import typing

# Our distributed processing functions go here
import worker

job_server = "localhost"
expansion_service = "localhost:8096"
# Set up this host to point to 127.0.0.1 in /etc/hosts
# CHANGED (bench/e2e copy): "host.docker.internal:9092" -> "localhost:9092". Nothing
# runs in a container here, and host.docker.internal does not resolve on this machine.
bootstrap_servers = "localhost:9092"
kafka_consumer_group_id = "kafka_echo"
input_topic = "echo-input"
output_topic = "echo-output"


def init_pipeline(job_server=job_server):
    pipeline_opts = {
        # MUST BE PortableRunner
        "runner": "PortableRunner",
        "job_name": "kafka_echo_demo",
        "job_endpoint": f"{job_server}:8099",
        "artifact_endpoint": f"{job_server}:8098",
        "environment_type": "EXTERNAL",
        "environment_config": "localhost:50000",
        "streaming": True,
        "parallelism": 2,
        "experiments": ["use_deprecated_read"],
        "checkpointing_interval": "60000",
    }
    pipeline_options = PipelineOptions([], **pipeline_opts)
    # Required, else it will complain that when importing worker functions
    pipeline_options.view_as(SetupOptions).save_main_session = True
    pipeline = beam.Pipeline(options=pipeline_options)
    return pipeline


def run_pipeline(pipeline):
    _ = (
        pipeline
        | "ReadMessages" >> kafka.ReadFromKafka(consumer_config={
                "bootstrap.servers": bootstrap_servers,
                "group.id": kafka_consumer_group_id,
                # CHANGED (bench/e2e copy): added. The group has no committed offsets,
                # so Kafka's default "latest" would skip every record produced before
                # the read started; "earliest" makes the check independent of timing.
                "auto.offset.reset": "earliest",
            },
            topics=[input_topic],
            expansion_service=expansion_service,
        )
        | beam.Map(lambda r: worker.kafka_record_processor(r)).with_output_types(typing.Tuple[bytes, bytes])
        | "WriteToKafka" >> kafka.WriteToKafka(producer_config={"bootstrap.servers": bootstrap_servers},
            topic=output_topic,
            expansion_service=expansion_service,
        ))
    pipeline.run().wait_until_finish()


if __name__ == '__main__':
    p = init_pipeline()
    run_pipeline(p)
