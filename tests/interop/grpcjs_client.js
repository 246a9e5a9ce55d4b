// A hushwire client written with nothing but the .proto files, grpc-js and the CA's certificate:
// what a Node service would write. tests/test_grpcjs_interop.py runs it.
//
//   node grpcjs_client.js TARGET PROTO_ROOT CA_PEM API_KEY [CLIENT_CERT CLIENT_KEY]
//
// It asks Account.WhoAmI, then streams 1 s of 16 kHz PCM16 noise through Enhancer.StreamEnhance in
// 20 ms chunks and half-closes; it prints one JSON line: {uid, name, delay, samples_out, vp_max}.
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [target, protoRoot, caPath, key, certPath, keyPath] = process.argv.slice(2);
const options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
                  includeDirs: [protoRoot] };
const defs = loader.loadSync(["hushwire/v1/enhancer.proto", "hushwire/v1/jobs.proto"], options);
const v1 = grpc.loadPackageDefinition(defs).hushwire.v1;
const creds = grpc.credentials.createSsl(
  fs.readFileSync(caPath),
  keyPath ? fs.readFileSync(keyPath) : null,
  certPath ? fs.readFileSync(certPath) : null);
const md = new grpc.Metadata();
md.set("authorization", key);
const deadline = () => new Date(Date.now() + 20000);

function fail(what, err) {
  console.error(`${what}: ${err.code} ${err.details}`);
  process.exit(1);
}

const account = new v1.Account(target, creds);
account.WhoAmI({}, md, { deadline: deadline() }, (err, me) => {
  if (err) fail("WhoAmI", err);
  const enhancer = new v1.Enhancer(target, creds);
  const call = enhancer.StreamEnhance(md, { deadline: deadline() });
  let delay = -1, samplesOut = 0, vpMax = 0;
  call.on("data", (resp) => {
    if (delay < 0) delay = resp.algorithmic_delay_samples;
    samplesOut += resp.audio.length / 2;
    vpMax = Math.max(vpMax, resp.voice_probability);
  });
  call.on("error", (e) => fail("StreamEnhance", e));
  call.on("end", () => {
    console.log(JSON.stringify({ uid: me.uid, name: me.name, delay, samples_out: samplesOut, vp_max: vpMax }));
    process.exit(0);
  });
  call.write({ config: { sample_rate_hz: 16000, channels: 1, encoding: "SAMPLE_ENCODING_PCM16" } });
  let seed = 1;
  for (let chunk = 0; chunk < 50; chunk++) {
    const pcm = Buffer.alloc(320 * 2);
    for (let i = 0; i < 320; i++) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      pcm.writeInt16LE((seed % 3000) - 1500, 2 * i);
    }
    call.write({ audio: pcm });
  }
  call.end();
});
