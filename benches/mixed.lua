-- wrk script for benches/cpu_per_request.sh MODE=mixed: on every connection, one request in
-- EVERY is a miss (a unique key), the others hits on a hot set of KEYS keys: the traffic a
-- keep-alive connection from a browser or a load balancer carries.
-- usage: wrk ... -s mixed.lua URL -- EVERY KEYS HOT_PREFIX MISS_PREFIX
function init(args)
  every = tonumber(args[1]); keys = tonumber(args[2])
  hot = args[3]; miss = args[4]
  counter = 0
end

function request()
  counter = counter + 1
  if counter % every == 0 then
    return wrk.format("GET", miss .. counter .. "?d=0")
  end
  return wrk.format("GET", hot .. (counter % keys))
end
