# frozen_string_literal: true

require "test_helper"

# Threads share a client without sharing a connection at once; a forked child never uses
# its parent's connections.
class ConcurrencyTest < Minitest::Test
  def setup
    @dir = Dir.mktmpdir("sidecar-client")
    @server = FakeSidecar.new(@dir)
    @client = Sidecar::Client.new(socket: @server.path, app_id: "1", timeout: 5)
  end

  def teardown
    @client.close
    @server.close
    FileUtils.remove_entry(@dir)
  end

  def test_threads_publish_at_once_each_request_whole
    threads = 8.times.map do |t|
      Thread.new { 40.times { |n| @client.trigger("t#{t}", "e", { n: n, pad: "p" * (t * 3000) }) } }
    end
    threads.each(&:join)
    seen = @server.seen
    assert_equal 320, seen.size
    8.times do |t|
      mine = seen.map(&:json).select { |body| body["channel"] == "t#{t}" }
      assert_equal((0...40).to_a, mine.map { |body| JSON.parse(body["data"])["n"] })
    end
    assert_operator seen.map(&:connection).uniq.size, :<=, 8
    assert_operator @client.instance_variable_get(:@connections).size, :<=, 8
  end

  def test_a_forked_child_opens_its_own_connection_and_leaves_the_parent_s_alone
    @client.trigger("a", "parent", 1)
    reader, writer = IO.pipe
    child = fork do
      reader.close
      @client.trigger("a", "child", 2)
      @client.trigger("a", "child", 3)
      writer.write("ok")
      writer.close
      exit!(0)
    rescue Exception => e # rubocop:disable Lint/RescueException
      writer.write("#{e.class}: #{e.message}")
      exit!(1)
    end
    writer.close
    _, status = Process.wait2(child)
    assert_equal "ok", reader.read
    assert status.success?
    @client.trigger("a", "parent", 4)
    by_event = @server.seen.group_by { |r| r.json["name"] }.transform_values { |rs| rs.map(&:connection) }
    assert_equal [1, 1], by_event["parent"], "the parent keeps its connection through the fork"
    assert_equal 1, by_event["child"].uniq.size
    refute_equal 1, by_event["child"].first, "the child never writes on its parent's socket"
  ensure
    reader&.close
  end

  def test_preload_style_many_children_each_publish
    @client.trigger("a", "parent", 0)
    children = 4.times.map do |n|
      fork do
        3.times { @client.trigger("a", "child#{n}", n) }
        exit!(0)
      rescue Exception # rubocop:disable Lint/RescueException
        exit!(1)
      end
    end
    statuses = children.map { |pid| Process.wait2(pid).last }
    assert statuses.all?(&:success?)
    per_child = @server.seen.reject { |r| r.json["name"] == "parent" }.group_by { |r| r.json["name"] }
    assert_equal 4, per_child.size
    connections = per_child.values.map { |rs| rs.map(&:connection).uniq }
    assert(connections.all? { |c| c.size == 1 })
    assert_equal 4, connections.flatten.uniq.size
    refute_includes connections.flatten, 1
  end
end
