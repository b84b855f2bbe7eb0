-- Dovecot push_notification Lua driver of a chatmail relay.
--
-- On every message Dovecot's LMTP delivers, tell chatmail-metadata through IMAP METADATA:
-- setting /private/messagenew makes it send a push notification to each device token of
-- the recipient. Messages a user sends to themselves (other devices pick them up by IMAP
-- anyway) do not ring.
--
-- Dovecot configuration:
--   protocol lmtp { mail_plugins = $mail_plugins mail_lua notify push_notification push_notification_lua }
--   plugin { push_notification_driver = lua:file=/etc/dovecot/push_notification.lua }

function dovecot_lua_notify_begin_txn(user)
  return user
end

function dovecot_lua_notify_event_message_new(user, event)
  if user.username == event.from_address then
    return
  end
  local mailbox = user:mailbox(event.mailbox)
  -- Sync first so the METADATA write reaches the dict in this mailbox's current state.
  mailbox:sync()
  mailbox:metadata_set("/private/messagenew", "")
  mailbox:free()
end

function dovecot_lua_notify_end_txn(ctx, success)
end
