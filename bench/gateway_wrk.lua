-- bench/gateway_wrk.lua — wrk's side of bench/gateway_bench.sh: POST
-- /v1/completions with the key in $MMS_KEY, each request the next of the JSON
-- bodies in the file $MMS_BODIES (one a line; each thread starts at its own
-- place, so that the threads do not send the same inputs at the same time).
-- At the end it prints one line for the script to read:
--   gateway-result <requests> <responses of status 400 and above> <socket errors> <p50 us> <p99 us>

local bodies = {}
for line in io.lines(os.getenv("MMS_BODIES")) do
	bodies[#bodies + 1] = line
end
local next_body = 1

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("MMS_KEY")
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
	thread:set("first", #threads * 9973)
	threads[#threads + 1] = thread
end

function init(args)
	next_body = (first or 0) % #bodies + 1
end

function request()
	local body = bodies[next_body]
	next_body = next_body % #bodies + 1
	return wrk.format(nil, "/v1/completions", nil, body)
end

function done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format("gateway-result %d %d %d %d %d\n", summary.requests, e.status,
		e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
