# Copy of /work/shared/seed/worker.py, unchanged.
# worker.py
#
# This file contains code required to run functions
# in worker nodes during Beam's distributed data processing
#
# It is also imported in the main pipeline
# However, any code needed during both building and at run-time
# should go to this file.

def kafka_record_processor(kafka_kv_rec):
    """dummy function that runs in the worker to echo a Kafka record"""

    # Incoming Kafka records must have a key associated.
    # Otherwise, Beam throws an exception with null keys.
    assert isinstance(kafka_kv_rec, tuple)
    print("Got kafka record value: ", str(kafka_kv_rec[1]))
    rec_key = str(kafka_kv_rec[0])
    rec_val = str(kafka_kv_rec[1])

    # return record as tuple[key, value] in bytes for echoing
    return bytes(rec_key, "utf-8"), bytes(rec_val, "utf-8")
