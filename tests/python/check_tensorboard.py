"""Reads a run directory's TensorBoard event files with tensorboard's own EventAccumulator
and prints what it holds as JSON: every scalar tag's (step, value) points and every image
tag's (step, width, height, SHA-256 of the PNG) in the order TensorBoard keeps them, after its
purge of orphaned data at restarts (tests/tensorboard_cli.rs judges them).

    check_tensorboard.py RUN_DIR
"""

import hashlib
import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea


def main():
    # Size guidance 0: keep every point (the default samples a reservoir).
    acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.IMAGES: 0}, purge_orphaned_data=True)
    acc.Reload()
    tags = acc.Tags()
    report = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "images": {
            t: [[e.step, e.width, e.height, hashlib.sha256(e.encoded_image_string).hexdigest()] for e in acc.Images(t)]
            for t in tags["images"]
        },
        "file_version": acc.file_version,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
