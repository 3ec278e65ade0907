#!/usr/bin/env bash
# Checks a running server (see serve.sh) with curl: structured chat output, embeddings and
# the OpenAI-compatible endpoints. Prints each response and the timings; exits non-zero on
# the first check that fails.
#
#   e2e/model/verify.sh [BASE_URL]     # default: $AIOS_MODEL_BASE_URL, else serve.sh status
#
# Needs curl and python3 (the JSON checks use only the standard library).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
base_url=${1:-${AIOS_MODEL_BASE_URL:-}}
if [ -z "$base_url" ]; then
  status=$("$here/serve.sh" status) ||
    { echo "verify: no server; pass BASE_URL or start one with serve.sh start [PORT]" >&2; exit 1; }
  eval "$status"
  base_url=$AIOS_MODEL_BASE_URL
fi
chat=${AIOS_MODEL_CHAT:-smollm2-135m-instruct}
embed=${AIOS_MODEL_EMBED:-all-minilm-l6-v2}
dim=${AIOS_MODEL_EMBED_DIM:-384}

# Loopback only: never route these requests through a proxy from the environment.
lcurl() { curl --noproxy '*' "$@"; }
fails=0
passes=0
check() { # check NAME PYTHON-CODE RESPONSE-FILE: the code sees `r` (the parsed response)
  local name=$1 code=$2 file=$3
  if python3 -c "import json,sys
r=json.load(open(sys.argv[1]))
$code" "$file"; then
    echo "PASS $name"; passes=$((passes + 1))
  else
    echo "FAIL $name: $(head -c 600 "$file")"; fails=$((fails + 1))
  fi
}
post() { # post PATH BODY OUT: POST and record the wall time in ms on stdout
  local t0 t1
  t0=$(date +%s%N)
  lcurl -fsS --max-time 300 -H 'Content-Type: application/json' "$base_url$1" -d "$2" -o "$3" ||
    { echo "FAIL POST $1 (curl failed)" >&2; exit 1; }
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000))
}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

schema='{"type":"object","properties":{"city":{"type":"string"},"country":{"type":"string"},"population":{"type":"integer"}},"required":["city","country","population"]}'

echo "== POST $base_url/api/chat with format=<JSON schema>, stream=false"
ms=$(post /api/chat "{\"model\":\"$chat\",\"stream\":false,\"format\":$schema,
  \"messages\":[{\"role\":\"user\",\"content\":\"Name one large city, its country and its population, as JSON.\"}],
  \"options\":{\"temperature\":0,\"num_predict\":128}}" "$out/chat.json")
cat "$out/chat.json"; echo; echo "   (${ms} ms)"
check "api/chat format=schema" '
c = json.loads(r["message"]["content"])
assert isinstance(c["city"], str) and isinstance(c["country"], str), c
assert isinstance(c["population"], int), c
assert r["prompt_eval_count"] > 0 and r["eval_count"] > 0 and r["done"], r
print("   content:", c, "prompt_eval_count:", r["prompt_eval_count"], "eval_count:", r["eval_count"])' "$out/chat.json"

echo "== POST $base_url/api/embed"
ms=$(post /api/embed "{\"model\":\"$embed\",\"input\":[\"The cat sits on the mat.\",\"A feline rests on a rug.\",\"Stock markets fell sharply today.\"]}" "$out/embed.json")
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r["embeddings"]=[e[:4]+["..."] for e in r["embeddings"]]; print(json.dumps(r))' "$out/embed.json"
echo "   (${ms} ms)"
check "api/embed dimension $dim, normalized, similar > unrelated" "
e = r['embeddings']
assert len(e) == 3 and all(len(v) == $dim for v in e), [len(v) for v in e]
dot = lambda a, b: sum(x * y for x, y in zip(a, b))
assert all(abs(dot(v, v) - 1) < 1e-3 for v in e)
assert dot(e[0], e[1]) > dot(e[0], e[2]) + 0.2, (dot(e[0], e[1]), dot(e[0], e[2]))
print('   dims:', [len(v) for v in e], 'cos(cat, feline)=%.3f cos(cat, stocks)=%.3f' % (dot(e[0], e[1]), dot(e[0], e[2])))" "$out/embed.json"

echo "== POST $base_url/v1/chat/completions with response_format=json_schema"
ms=$(post /v1/chat/completions "{\"model\":\"$chat\",\"temperature\":0,\"max_tokens\":128,
  \"messages\":[{\"role\":\"user\",\"content\":\"Name one large city, its country and its population, as JSON.\"}],
  \"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"city\",\"schema\":$schema}}}" "$out/oai.json")
cat "$out/oai.json"; echo; echo "   (${ms} ms)"
check "v1/chat/completions json_schema" '
c = json.loads(r["choices"][0]["message"]["content"])
assert isinstance(c["city"], str) and isinstance(c["population"], int), c
assert r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0, r["usage"]' "$out/oai.json"

echo "== POST $base_url/v1/embeddings"
ms=$(post /v1/embeddings "{\"model\":\"$embed\",\"input\":\"hello world\"}" "$out/oaiemb.json")
echo "   (${ms} ms)"
check "v1/embeddings dimension $dim" "
assert len(r['data'][0]['embedding']) == $dim, len(r['data'][0]['embedding'])" "$out/oaiemb.json"

echo "== timing: a ~200-token free-text answer from /api/chat"
ms=$(post /api/chat "{\"model\":\"$chat\",\"stream\":false,
  \"messages\":[{\"role\":\"user\",\"content\":\"Write a detailed essay about the history of the bicycle.\"}],
  \"options\":{\"temperature\":0,\"num_predict\":200}}" "$out/long.json")
check "200-token answer" '
ns = 1e9
print("   eval_count=%d prompt_eval_count=%d eval %.1f tok/s, prompt %.1f tok/s, total %.2f s, load %.2f s" % (
  r["eval_count"], r["prompt_eval_count"], r["eval_count"] / (r["eval_duration"] / ns),
  r["prompt_eval_count"] / (r["prompt_eval_duration"] / ns), r["total_duration"] / ns, r["load_duration"] / ns))' "$out/long.json"
echo "   (wall ${ms} ms)"

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
