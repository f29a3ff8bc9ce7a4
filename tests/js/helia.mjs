// Reads a file through an HTTP gateway as Helia, the IPFS ecosystem's
// JavaScript node, does it: block by block from a trustless gateway
// (`/ipfs/CID?format=raw`), each block checked against its CID.
//   node helia.mjs GATEWAY_URL CID[/PATH]  ->  {"bytes": N, "sha256": "…"}

// Node.js 20 lacks Promise.withResolvers (22+), which Helia's queues use.
Promise.withResolvers ??= function () {
  let resolve, reject
  const promise = new Promise((a, b) => { resolve = a; reject = b })
  return { promise, resolve, reject }
}

const { createHeliaHTTP } = await import('@helia/http')
const { trustlessGateway } = await import('@helia/block-brokers')
const { httpGatewayRouting } = await import('@helia/routers')
const { unixfs } = await import('@helia/unixfs')
const { CID } = await import('multiformats/cid')
const { createHash } = await import('node:crypto')

// Helia asks again and again for a block a gateway does not have, past
// its abort signal: fail rather than hang.
setTimeout(() => {
  console.error('Helia did not finish within 60 s')
  process.exit(1)
}, 60_000).unref()

const [gateway, address] = process.argv.slice(2)
const helia = await createHeliaHTTP({
  blockBrokers: [trustlessGateway({ allowInsecure: true, allowLocal: true })],
  routers: [httpGatewayRouting({ gateways: [gateway] })]
})
const [root, ...path] = address.split('/')
const hash = createHash('sha256')
let bytes = 0
for await (const chunk of unixfs(helia).cat(CID.parse(root), { path: path.join('/') })) {
  hash.update(chunk)
  bytes += chunk.length
}
console.log(JSON.stringify({ bytes, sha256: hash.digest('hex') }))
await helia.stop()
