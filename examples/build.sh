#!/usr/bin/env bash
# Builds the example guests and turns each into an OCI image tarball under target/images/,
# ready for `ctr images import`. Image names: localhost/wasmtime-shim/<example>:latest.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/images
mkdir -p "$out"

cargo build --release --quiet --manifest-path examples/guests/Cargo.toml \
  --target wasm32-wasip1 --target-dir target/guests \
  --bin exit-code --bin args-env --bin file-reader --bin sleeper --bin cat \
  --bin memory-hog --bin counter --bin file-writer --bin disk-filler
cargo build --release --quiet --manifest-path examples/guests/Cargo.toml \
  --target wasm32-wasip2 --target-dir target/guests --bin hello-component --bin tcp-echo --bin tcp-client --bin exit-code
cargo build --release --quiet --manifest-path examples/http-hello/Cargo.toml \
  --target wasm32-wasip2 --target-dir target/guests
cargo build --release --quiet --manifest-path examples/p3-command/Cargo.toml \
  --target wasm32-wasip2 --target-dir target/guests
cargo build --release --quiet --manifest-path examples/p3-http/Cargo.toml \
  --target wasm32-wasip2 --target-dir target/guests
cargo build --release --quiet -p wasmtime-shim-tests --bin mkimage
p1=target/guests/wasm32-wasip1/release
p2=target/guests/wasm32-wasip2/release
mk() { local name=$1; shift; target/release/mkimage --name "localhost/wasmtime-shim/$name:latest" --out "$out/$name.tar" "$@"; }

mk hello --file examples/wat/hello.wat:/hello.wasm --entrypoint /hello.wasm
mk busy-loop --file examples/wat/busy-loop.wat:/busy-loop.wasm --entrypoint /busy-loop.wasm
mk trap --file examples/wat/trap.wat:/trap.wasm --entrypoint /trap.wasm
mk exit-code --file $p1/exit-code.wasm:/exit-code.wasm --entrypoint /exit-code.wasm --cmd 0
# Found through PATH, run in /app.
mk args-env --file $p1/args-env.wasm:/app/bin/args-env.wasm --env PATH=/app/bin:/bin \
  --env GREETING=hello --workdir /app --entrypoint args-env.wasm --cmd first --cmd "second arg"
mk file-reader --file $p1/file-reader.wasm:/file-reader.wasm \
  --file examples/data/message.txt:/data/message.txt \
  --entrypoint /file-reader.wasm --cmd /data/message.txt
# A device node shipped in the image (/dev/null's numbers): a guest cannot open it (nodev mounts).
mk device-node --file $p1/file-reader.wasm:/file-reader.wasm --device /devices/null:c:1:3 \
  --file examples/data/message.txt:/data/message.txt \
  --entrypoint /file-reader.wasm --cmd /devices/null --cmd /data/message.txt
mk sleeper --file $p1/sleeper.wasm:/sleeper.wasm --entrypoint /sleeper.wasm
mk cat --file $p1/cat.wasm:/cat.wasm --entrypoint /cat.wasm
mk memory-hog --file $p1/memory-hog.wasm:/memory-hog.wasm --entrypoint /memory-hog.wasm
mk disk-filler --file $p1/disk-filler.wasm:/disk-filler.wasm --entrypoint /disk-filler.wasm \
  --cmd /scratch/fill
mk counter --file $p1/counter.wasm:/counter.wasm --entrypoint /counter.wasm
mk file-writer --file $p1/file-writer.wasm:/file-writer.wasm --entrypoint /file-writer.wasm \
  --cmd /written.txt --cmd hello
mk hello-component --file $p2/hello-component.wasm:/hello.wasm --entrypoint /hello.wasm
mk tcp-client --file $p2/tcp-client.wasm:/tcp-client.wasm --entrypoint /tcp-client.wasm
# Runs as uid/gid 1000 (the image's User).
mk sleeper-user --file $p1/sleeper.wasm:/sleeper.wasm --entrypoint /sleeper.wasm --user 1000:1000
mk tcp-echo --file $p2/tcp-echo.wasm:/tcp-echo.wasm --entrypoint /tcp-echo.wasm
# A wasi:http component: served on WASMTIME_HTTP_PROXY_SOCKET_ADDR (default 0.0.0.0:8080).
mk http-hello --file $p2/http_hello.wasm:/http-hello.wasm --entrypoint /http-hello.wasm
# A WASIp3 command (exports wasi:cli/run@0.3).
mk p3-command --file $p2/p3_command.wasm:/p3-command.wasm --entrypoint /p3-command.wasm
# A WASIp3 HTTP component (exports wasi:http/handler@0.3): served like http-hello.
mk p3-http --file $p2/p3_http.wasm:/p3-http.wasm --entrypoint /p3-http.wasm
echo "images in $out:" $(cd "$out" && ls)
