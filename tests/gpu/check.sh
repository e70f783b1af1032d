#!/usr/bin/env bash
# GPU check for issue [B], run once on a machine with an NVIDIA GPU (the device tool):
#   gpu_info with both backends against the real driver, and a CUDA PyTorch loop that saves with
#   torch.save and DCP on SIGUSR1, verified by checkpoint_info and checkpoint_manifest.
# Needs: the NVIDIA driver, a CUDA build of torch in PYTHON, and ansible-core (ANSIBLE=path/to/ansible).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'kill "${trainer:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
export ANSIBLE_COLLECTIONS_PATH="$work/collections"
mkdir -p "$work/collections/ansible_collections/spot"
ln -s "$PWD" "$work/collections/ansible_collections/spot/migration"
ANSIBLE=${ANSIBLE:-ansible}
adhoc() { "$ANSIBLE" localhost -c local -e "ansible_python_interpreter=$PYTHON" "$@"; }

echo "== nvidia-smi -L"; nvidia-smi -L
for backend in nvml nvidia-smi; do
  echo "== gpu_info backend=$backend"
  adhoc -m spot.migration.gpu_info -a "backend=$backend" | head -40
done

echo "== CUDA training loop, SIGUSR1 twice"
"$PYTHON" tests/gpu/train_loop.py "$work/ckpt" & trainer=$!
sleep 8; kill -USR1 "$trainer"; sleep 4; kill -USR1 "$trainer"
wait "$trainer"
echo "== checkpoint_info"
adhoc -m spot.migration.checkpoint_info -a "path=$work/ckpt"
adhoc -m spot.migration.checkpoint_info -a "path=$work/ckpt format=dcp"
newest=$(find "$work/ckpt" -maxdepth 1 -name "dcp-step-*" -type d | sort -V | tail -1)
echo "== checkpoint_manifest present + verified on $newest"
adhoc -m spot.migration.checkpoint_manifest -a "path=$newest"
adhoc -m spot.migration.checkpoint_manifest -a "path=$newest state=verified"
