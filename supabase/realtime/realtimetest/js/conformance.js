// Runs the official @supabase/realtime-js client against the Go test
// server for conformance_test.go: subscribes like the node does and prints
// one JSON line per status, system message, change and broadcast it
// receives. Env: RT_URL, RT_APIKEY, RT_TOKEN, RT_NODE_ID, RT_VSN
// (optional), RT_MODE (optional: "broadcast" joins the node's private
// topic for Broadcast from Database instead of postgres_changes).
'use strict'
const { RealtimeClient } = require('@supabase/realtime-js')
const WebSocket = require('ws')

const env = process.env
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const opts = {
  params: { apikey: env.RT_APIKEY },
  transport: WebSocket,
  heartbeatIntervalMs: 5000,
}
if (env.RT_VSN) opts.vsn = env.RT_VSN
const client = new RealtimeClient(env.RT_URL, opts)
const id = env.RT_NODE_ID

const onStatus = (status, err) => out({ kind: 'status', status, error: err ? String(err.message || err) : null })

async function main () {
  // Join with the node's token, not the apikey.
  await client.setAuth(env.RT_TOKEN)
  if (env.RT_MODE === 'broadcast') {
    client
      .channel('waylume:node:' + id, { config: { private: true } })
      .on('broadcast', { event: '*' }, (p) => out({ kind: 'broadcast', payload: p }))
      .subscribe(onStatus)
    return
  }
  client
    .channel('waylume-node-' + id)
    .on('postgres_changes', { event: '*', schema: 'waylume', table: 'peers', filter: 'node_id=eq.' + id },
      (p) => out({ kind: 'change', payload: p }))
    .on('postgres_changes', { event: '*', schema: 'waylume', table: 'nodes', filter: 'id=eq.' + id },
      (p) => out({ kind: 'change', payload: p }))
    .on('system', {}, (p) => out({ kind: 'system', payload: p }))
    .subscribe(onStatus)
}
main().catch((e) => { out({ kind: 'status', status: 'SCRIPT_ERROR', error: String(e) }); process.exit(1) })

// The test closes stdin to stop us.
process.stdin.on('end', async () => {
  await client.removeAllChannels()
  client.disconnect()
  process.exit(0)
})
process.stdin.resume()
