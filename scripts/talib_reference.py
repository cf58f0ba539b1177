#!/usr/bin/env python3
"""TA-Lib reference values for the indicator tests.

Reads ../shared/data/BTCUSDT-1m-2021-02-19_25.csv and writes
tests/fixtures/talib/btcusdt-2000.json: every indicator the rule language
has, as TA-Lib (the `ta-lib` wheel) computes it over the first 2,000
candles, null where TA-Lib has no value yet (VWAP is not in TA-Lib: it is the
rolling volume-weighted typical price, computed here with numpy); and
tests/fixtures/talib/btcusdt-ema-week.json: EMA(50) and EMA(200) over the
whole week (10,080 candles), for the long-period rules.

The output is committed; to regenerate it:

    python3 -m venv /tmp/talib-venv
    /tmp/talib-venv/bin/pip install ta-lib==0.8.2 numpy   # the version recorded in the JSON
    /tmp/talib-venv/bin/python scripts/talib_reference.py
"""
import json
import math
import os
import sys

import numpy as np
import talib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.environ.get("SHMKLINE_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
N = 2000

rows = []
with open(os.path.join(DATA, "BTCUSDT-1m-2021-02-19_25.csv")) as f:
    for line in f:
        rows.append([float(x) for x in line.strip().split(",")])
week = np.array(rows)
a = week[:N]
o, h, l, c, v = a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5]

macd, macd_signal, macd_hist = talib.MACD(c, 12, 26, 9)
upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
typical = (h + l + c) / 3.0
vwap = np.full(len(c), np.nan)
for i in range(19, len(c)):
    pv = 0.0
    vol = 0.0
    for j in range(i - 19, i + 1):
        pv += typical[j] * v[j]
        vol += v[j]
    vwap[i] = pv / vol

series = {
    "sma(close, 20)": talib.SMA(c, 20),
    "ema(close, 9)": talib.EMA(c, 9),
    "ema(close, 21)": talib.EMA(c, 21),
    "wma(close, 10)": talib.WMA(c, 10),
    "rsi(close, 14)": talib.RSI(c, 14),
    "stddev(close, 20)": talib.STDDEV(c, 20, 1.0),
    "roc(close, 10)": talib.ROC(c, 10),
    "highest(high, 20)": talib.MAX(h, 20),
    "lowest(low, 20)": talib.MIN(l, 20),
    "atr(14)": talib.ATR(h, l, c, 14),
    "macd(close, 12, 26, 9).line": macd,
    "macd(close, 12, 26, 9).signal": macd_signal,
    "macd(close, 12, 26, 9).hist": macd_hist,
    "bollinger(close, 20, 2).upper": upper,
    "bollinger(close, 20, 2).middle": middle,
    "bollinger(close, 20, 2).lower": lower,
    "vwap(20)": vwap,
}
out = {
    "generated_by": "scripts/talib_reference.py",
    "talib": talib.__version__,
    "candles": N,
    "series": {k: [None if math.isnan(x) else float(x) for x in s] for k, s in series.items()},
}
path = os.path.join(ROOT, "tests", "fixtures", "talib", "btcusdt-2000.json")
with open(path, "w") as f:
    json.dump(out, f, separators=(",", ":"))
print(f"wrote {path}: {len(series)} series x {N} candles (ta-lib {talib.__version__})", file=sys.stderr)

closes = week[:, 4]
ema = {
    "generated_by": "scripts/talib_reference.py",
    "talib": talib.__version__,
    "candles": len(closes),
    "series": {
        f"ema(close, {n})": [None if math.isnan(x) else float(x) for x in talib.EMA(closes, n)]
        for n in (50, 200)
    },
}
path = os.path.join(ROOT, "tests", "fixtures", "talib", "btcusdt-ema-week.json")
with open(path, "w") as f:
    json.dump(ema, f, separators=(",", ":"))
print(f"wrote {path}: EMA(50), EMA(200) x {len(closes)} candles", file=sys.stderr)
