# frozen_string_literal: true

# Publish latency of the Ruby client (clients/ruby) over a running sidecar's Unix socket:
# N publishes on one kept connection, then N each on a new connection, p50/p90/p99 of each.
#
#   sidecar run --config sidecar.yaml &      # any running sidecar
#   ruby bench/ruby_publish.rb --socket ./sidecar.sock --app-id 1 [--count 1000] [--bytes 100]
#
# Prints one line per mode. Speed is measured here, never asserted in tests.
$LOAD_PATH.unshift(File.expand_path("../clients/ruby/lib", __dir__))
require "optparse"
require "sidecar/client"

options = { socket: "./sidecar.sock", app_id: "1", count: 1000, bytes: 100, warmup: 100 }
OptionParser.new do |parser|
  parser.on("--socket PATH") { |v| options[:socket] = v }
  parser.on("--app-id ID") { |v| options[:app_id] = v }
  parser.on("--count N", Integer) { |v| options[:count] = v }
  parser.on("--bytes N", Integer, "size of each event's data") { |v| options[:bytes] = v }
  parser.on("--warmup N", Integer) { |v| options[:warmup] = v }
end.parse!

def percentile(sorted, fraction)
  sorted[[(sorted.size * fraction).ceil - 1, 0].max]
end

def clock
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

def measure(count)
  Array.new(count) do |n|
    started = clock
    yield n
    clock - started
  end.sort
end

def report(label, seconds)
  us = ->(s) { format("%.0f", s * 1e6) }
  puts format("%-26s n=%d  p50 %s us  p90 %s us  p99 %s us  max %s us", label, seconds.size,
              us.(percentile(seconds, 0.5)), us.(percentile(seconds, 0.9)),
              us.(percentile(seconds, 0.99)), us.(seconds.last))
end

data = "x" * options[:bytes]
client = Sidecar::Client.new(socket: options[:socket], app_id: options[:app_id])
options[:warmup].times { client.trigger("bench", "warmup", data) }

kept = measure(options[:count]) { client.trigger("bench", "kept", data) }
client.close
fresh = measure(options[:count]) do
  # A client that closes after each publish: a new connection every time.
  client.trigger("bench", "fresh", data)
  client.close
end

puts "ruby #{RUBY_VERSION}, #{options[:bytes]}-byte events, socket #{options[:socket]}"
report("kept-alive connection", kept)
report("new connection each time", fresh)
