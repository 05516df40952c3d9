// Sends Segment calls through the real @segment/analytics-node SDK to a gateway, then flushes.
// Usage: node send.mjs < spec.json, where spec is {"host", "writeKey", "calls": [{"type", ...}]}
// and each call is the SDK's own parameters (userId, event, properties, context, messageId, ...).
// Prints one JSON line per HTTP answer the SDK got; exits 1 when a call was not delivered.
import { readFileSync } from 'node:fs'
import { Analytics } from '@segment/analytics-node'

const spec = JSON.parse(readFileSync(0, 'utf8'))
const analytics = new Analytics({
  writeKey: spec.writeKey,
  host: spec.host,
  flushAt: spec.calls.length, // one batch, as a busy backend sends them
  flushInterval: 500,
  maxRetries: 5,
})
analytics.on('http_response', ({ status, url }) => console.log(JSON.stringify({ status, url })))

const failures = []
await Promise.all(
  spec.calls.map(
    ({ type, ...params }) =>
      new Promise((resolve) => {
        analytics[type](params, (error) => {
          if (error) failures.push(String(error.reason ?? error))
          resolve()
        })
      }),
  ),
)
await analytics.closeAndFlush({ timeout: 30000 })
if (failures.length) {
  console.error(JSON.stringify({ failures }))
  process.exit(1)
}
