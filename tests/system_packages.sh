#!/usr/bin/env bash
# Debian packages some tests drive: Chromium for the labelling page, a one-node SLURM for the cluster profile.
# Installs what is missing when run as root on Debian/Ubuntu; otherwise says what those tests will need.
set -euo pipefail
declare -A PACKAGE_OF=(
  [chromium]=chromium [chromedriver]=chromium-driver
  [slurmctld]=slurm-wlm [slurmd]=slurm-wlm [sbatch]=slurm-wlm [munged]=munge
)
missing=()
for program in "${!PACKAGE_OF[@]}"; do
  command -v "$program" >/dev/null || missing+=("${PACKAGE_OF[$program]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing test packages: $packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
else
  echo "note: the browser and SLURM tests will be skipped without: $packages (apt-get install $packages, as root)"
fi
