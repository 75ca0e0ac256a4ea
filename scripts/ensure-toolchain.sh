#!/usr/bin/env bash
# rust-toolchain.toml pins the toolchain by version. Machines of this kind
# carry it as rustup's "stable" (1.95.0) and cannot download another one:
# where rustup does not know it under its version yet, name it so, instead
# of letting rustup try a download that cannot succeed. Prints nothing and
# changes nothing when the pinned toolchain is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
home=${RUSTUP_HOME:-$HOME/.rustup}
host=$(RUSTUP_TOOLCHAIN=stable rustc -vV | sed -n 's/^host: //p')
[[ -e $home/toolchains/$want-$host ]] && exit 0
have=$(RUSTUP_TOOLCHAIN=stable rustc --version | awk '{print $2}')
if [[ $have == "$want" ]]; then
  ln -s "stable-$host" "$home/toolchains/$want-$host"
  echo "toolchain: rustup's stable is $want; named it $want-$host" >&2
else
  echo "toolchain: rust-toolchain.toml wants $want, rustup's stable is $have" >&2
fi
