"""Ship a trained tiny-world VAE as the package asset ``e2v/assets/tiny_world_vae`` (fp16 safetensors + config).

    python tools/ship_vae.py runs/vae_asset/export

Prints the sha256 to record in ``e2v.assets.SHIPPED`` (checked at every load).
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from e2v.modules.weights import shard_files

ASSET = Path(__file__).resolve().parent.parent / "e2v" / "assets" / "tiny_world_vae"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    export = Path(sys.argv[1])
    tensors = {}
    for shard in shard_files(export):
        tensors.update({k: v.half().contiguous() for k, v in load_file(shard).items()})
    ASSET.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(export / "config.json", ASSET / "config.json")
    save_file(tensors, str(ASSET / "model.safetensors"), metadata={"format": "pt"})
    digest = hashlib.sha256((ASSET / "model.safetensors").read_bytes()).hexdigest()
    print(json.dumps({"folder": str(ASSET), "sha256": digest, "tensors": len(tensors)}, indent=2))


if __name__ == "__main__":
    main()
