# frozen_string_literal: true

require "test_helper"

# The vectors of ../shared/PROTOCOL.md (Pusher's documented private-channel example) and,
# for presence and sign-in, signatures computed by the sidecar's own checker
# (sidecar.relay.auth.hmac_sha256_hex over channel_string / user_string).
class SignatureTest < Minitest::Test
  KEY = "278d425bdf160c739803"
  SECRET = "7ad3773142a6692b25b8"

  def client
    Sidecar::Client.new(socket: "/nonexistent.sock", app_id: "3", key: KEY, secret: SECRET)
  end

  def test_private_channel_vector
    reply = client.authenticate("private-foobar", "1234.1234")
    assert_equal({ auth: "#{KEY}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4" },
                 reply)
  end

  def test_presence_channel_vector_signs_the_channel_data_it_returns
    reply = client.authenticate("presence-foobar", "1234.1234",
                                { user_id: 10, user_info: { name: "Mr. Channels" } })
    assert_equal '{"user_id":10,"user_info":{"name":"Mr. Channels"}}', reply[:channel_data]
    assert_equal "#{KEY}:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
                 reply[:auth]
  end

  def test_user_sign_in_vector
    reply = client.authenticate_user("1234.1234", { id: "12345", name: "Mr. Channels" })
    assert_equal '{"id":"12345","name":"Mr. Channels"}', reply[:user_data]
    assert_equal "#{KEY}:7c040e9d38c911511ef277608caf877ed7027525fe38a19a81b73f74e7caef49",
                 reply[:auth]
  end

  def test_private_channel_leaves_custom_data_out_as_the_sidecar_checks
    reply = client.authenticate("private-foobar", "1234.1234", { user_id: 10 })
    assert_equal({ auth: "#{KEY}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4" },
                 reply)
  end

  def test_without_key_or_secret_auth_is_a_clear_error
    bare = Sidecar::Client.new(socket: "/nonexistent.sock", app_id: "3")
    error = assert_raises(Sidecar::Error) { bare.authenticate("private-a", "1.2") }
    assert_match(/key and secret/, error.message)
    no_secret = Sidecar::Client.new(socket: "/x.sock", app_id: "3", key: KEY)
    assert_raises(Sidecar::Error) { no_secret.authenticate_user("1.2", { id: "1" }) }
  end

  def test_presence_needs_a_user_id
    error = assert_raises(ArgumentError) { client.authenticate("presence-room", "1.2") }
    assert_match(/user_id/, error.message)
    assert_raises(ArgumentError) { client.authenticate("presence-room", "1.2", { name: "x" }) }
  end

  def test_socket_id_must_look_like_pusher_js_s
    %w[1234 abc.def 1.2.3].push("1.2\n").each do |bad|
      assert_raises(ArgumentError) { client.authenticate("private-a", bad) }
    end
  end

  def test_sign_in_needs_an_id
    assert_raises(ArgumentError) { client.authenticate_user("1.2", { name: "x" }) }
    assert_raises(ArgumentError) { client.authenticate_user("1.2", { id: "" }) }
  end
end
