// Runs the official @supabase/auth-js client against the Go Auth stand-in
// for conformance_test.go: admin create, password sign-in, refresh
// (rotation and the reuse window), JWKS verification of the access token,
// refusals, ban and delete. Prints one JSON line per step.
// Env: AUTH_URL (<project>/auth/v1), AUTH_PUBLISHABLE, AUTH_SECRET, EMAIL, PASSWORD, NODE_ID.
'use strict'
const { GoTrueClient, GoTrueAdminApi } = require('@supabase/auth-js')

const env = process.env
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const errOf = (e) => (e ? { name: e.name, status: e.status, code: e.code } : null)

const memory = () => {
  const m = new Map()
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, v), removeItem: (k) => m.delete(k) }
}

async function main () {
  const admin = new GoTrueAdminApi({
    url: env.AUTH_URL,
    headers: { apikey: env.AUTH_SECRET, Authorization: 'Bearer ' + env.AUTH_SECRET }
  })
  const client = new GoTrueClient({
    url: env.AUTH_URL,
    headers: { apikey: env.AUTH_PUBLISHABLE },
    autoRefreshToken: false,
    persistSession: false,
    storage: memory()
  })

  const created = await admin.createUser({
    email: env.EMAIL, password: env.PASSWORD, email_confirm: true, app_metadata: { node_id: env.NODE_ID }
  })
  out({ kind: 'admin_create', user: created.data.user, error: errOf(created.error) })
  const dup = await admin.createUser({ email: env.EMAIL, password: env.PASSWORD, email_confirm: true })
  out({ kind: 'admin_create_again', error: errOf(dup.error) })

  const bad = await client.signInWithPassword({ email: env.EMAIL, password: 'wrong-' + env.PASSWORD })
  out({ kind: 'sign_in_wrong_password', error: errOf(bad.error) })

  const signed = await client.signInWithPassword({ email: env.EMAIL, password: env.PASSWORD })
  const s1 = signed.data.session
  out({ kind: 'sign_in', error: errOf(signed.error), session: s1 && pick(s1), user: signed.data.user })

  const claims = await client.getClaims(s1.access_token)
  out({ kind: 'claims', error: errOf(claims.error), header: claims.data && claims.data.header, claims: claims.data && claims.data.claims })

  const r1 = await client.refreshSession({ refresh_token: s1.refresh_token })
  const s2 = r1.data.session
  out({ kind: 'refresh', error: errOf(r1.error), session: s2 && pick(s2), rotated: !!s2 && s2.refresh_token !== s1.refresh_token })

  // Within the reuse window the used token is answered with the live one.
  const again = await client.refreshSession({ refresh_token: s1.refresh_token })
  out({ kind: 'refresh_reuse_in_window', error: errOf(again.error), same_live_token: !!again.data.session && again.data.session.refresh_token === s2.refresh_token })

  const bogus = await client.refreshSession({ refresh_token: 'not-a-token' })
  out({ kind: 'refresh_unknown', error: errOf(bogus.error) })

  const list = await admin.listUsers({ page: 1, perPage: 50 })
  out({ kind: 'admin_list', error: errOf(list.error), ids: (list.data.users || []).map((u) => u.id) })

  const id = created.data.user.id
  const banned = await admin.updateUserById(id, { ban_duration: '876000h' })
  out({ kind: 'admin_ban', error: errOf(banned.error), banned_until: banned.data.user && banned.data.user.banned_until })
  const afterBan = await client.signInWithPassword({ email: env.EMAIL, password: env.PASSWORD })
  out({ kind: 'sign_in_banned', error: errOf(afterBan.error) })
  const refreshBanned = await client.refreshSession({ refresh_token: s2.refresh_token })
  out({ kind: 'refresh_banned', error: errOf(refreshBanned.error) })

  const del = await admin.deleteUser(id)
  out({ kind: 'admin_delete', error: errOf(del.error) })
  const afterDelete = await client.signInWithPassword({ email: env.EMAIL, password: env.PASSWORD })
  out({ kind: 'sign_in_deleted', error: errOf(afterDelete.error) })

  const notAdmin = new GoTrueAdminApi({ url: env.AUTH_URL, headers: { apikey: env.AUTH_PUBLISHABLE, Authorization: 'Bearer ' + env.AUTH_PUBLISHABLE } })
  const refused = await notAdmin.createUser({ email: 'x-' + env.EMAIL, password: env.PASSWORD })
  out({ kind: 'admin_with_publishable', error: errOf(refused.error) })
  out({ kind: 'done' })
}

function pick (s) {
  return {
    access_token: s.access_token, refresh_token: s.refresh_token, token_type: s.token_type,
    expires_in: s.expires_in, expires_at: s.expires_at
  }
}

main().catch((e) => { out({ kind: 'fatal', error: String(e && e.stack || e) }); process.exit(1) })
