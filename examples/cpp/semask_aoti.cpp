// semask_aoti: run a SeMask AOTInductor package (semask-export --fmt aoti) on one image, write its label map.
//
//   semask_aoti <model.pt2> <image.ppm> <labels.pgm> [--scale LONG,SHORT] [--no-resize] [--device cpu|cuda[:i]]
//               [--bench N]
//
// The package (torch._inductor.aoti_compile_and_package) holds the compiled model: input float32 (N,3,H,W)
// normalised RGB -> labels int32 (N,H,W) [+ logits float32 (N,K,H,W) when exported with --with-logits].
// Loaded with torch::inductor::AOTIModelPackageLoader from the LibTorch inside the torch wheel. Pre/post-
// processing is semask_pipeline.h, the same as the Python pipeline (semask-infer): keep-ratio resize to the
// test scale stored in the package (cv::resize INTER_LINEAR, bit for bit), normalise, run, logits resized
// bilinearly back to the image size and argmax (labels-only packages: nearest-neighbour on the labels).
// Input: binary PPM (P6); output: PGM (P5), one byte per pixel = class index. Build: see README.md.

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "semask_pipeline.h"

namespace {

struct Options {
    std::string package, image, output, device;  // device: empty = the package's own
    int longEdge = 0, shortEdge = 0;               // 0: the package's test scale (semask.test_scale)
    bool resize = true;
    int benchIters = 0;
};

[[noreturn]] void usage(char const* argv0) {
    std::cerr << "usage: " << argv0 << " <model.pt2> <image.ppm> <labels.pgm> [--scale LONG,SHORT] [--no-resize]\n"
              << "       [--device cpu|cuda[:i]] [--bench N]\n"
              << "  --scale      keep-ratio test scale (default: the one stored in the package, e.g. 2048,512)\n"
              << "  --no-resize  run at the image's own size\n"
              << "  --device     where the package runs (default: the device it was compiled for)\n"
              << "  --bench N    also time N extra runs\n";
    std::exit(2);
}

Options parseArgs(int argc, char** argv) {
    if (argc < 4) usage(argv[0]);
    Options o;
    o.package = argv[1], o.image = argv[2], o.output = argv[3];
    for (int i = 4; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) usage(argv[0]);
            return argv[++i];
        };
        if (a == "--scale") {
            char comma = 0;
            std::istringstream in(next());
            if (!(in >> o.longEdge >> comma >> o.shortEdge) || comma != ',' || o.longEdge <= 0 || o.shortEdge <= 0)
                usage(argv[0]);
        } else if (a == "--no-resize") {
            o.resize = false;
        } else if (a == "--device") {
            o.device = next();
        } else if (a == "--bench") {
            o.benchIters = std::stoi(next());
        } else {
            usage(argv[0]);
        }
    }
    return o;
}

std::string metaValue(std::unordered_map<std::string, std::string> const& meta, std::string const& key,
                      std::string const& fallback) {
    auto it = meta.find(key);
    return it == meta.end() ? fallback : it->second;
}

int run(Options opt) {
    c10::InferenceMode guard;
    if (!std::ifstream(opt.package).good()) throw std::runtime_error("cannot open the package " + opt.package);
    torch::inductor::AOTIModelPackageLoader loader(opt.package);
    auto const meta = loader.get_metadata();
    std::string const device = opt.device.empty() ? metaValue(meta, "AOTI_DEVICE_KEY", "cpu") : opt.device;
    std::string const resizeKind = metaValue(meta, "semask.resize_kind", "keep_ratio");
    if (resizeKind != "keep_ratio")  // Mask2Former & co: detectron2's shortest-edge rule with PIL's bilinear
        throw std::runtime_error("the package holds a model whose test-time resize is '" + resizeKind +
                                 "' (detectron2's shortest edge with PIL's bilinear filter), which this app does not "
                                 "reproduce; run it with semask-infer or semask_deploy.Segmenter");
    if (opt.longEdge == 0) {
        char comma = 0;
        std::istringstream in(metaValue(meta, "semask.test_scale", "2048,512"));
        if (!(in >> opt.longEdge >> comma >> opt.shortEdge) || comma != ',')
            throw std::runtime_error("bad semask.test_scale in the package metadata");
    }

    semask::Image const original = semask::readPpm(opt.image);
    int runW = original.width, runH = original.height;
    if (opt.resize) std::tie(runW, runH) = semask::keepRatioSize(original.width, original.height, opt.longEdge, opt.shortEdge);
    // a static package (semask-export --static HxW) does not check its input: another size would be read out
    // of bounds, so refuse it here
    std::string const batch = metaValue(meta, "semask.static_batch", "");
    if (!batch.empty() && batch != "1")
        throw std::runtime_error("the package was compiled for batches of " + batch +
                                 " (semask-export --batch); this app runs one image: export with --batch 1");
    std::string const fixed = metaValue(meta, "semask.static_hw", "");
    if (!fixed.empty()) {
        int fixedH = 0, fixedW = 0;
        char comma = 0;
        std::istringstream in(fixed);
        if (!(in >> fixedH >> comma >> fixedW) || comma != ',')
            throw std::runtime_error("bad semask.static_hw in the package metadata");
        if (fixedH != runH || fixedW != runW)
            throw std::runtime_error("the package was compiled for " + std::to_string(fixedH) + "x" +
                                     std::to_string(fixedW) + " inputs (semask-export --static), but this image runs at " +
                                     std::to_string(runH) + "x" + std::to_string(runW) +
                                     ": export a dynamic package (no --static) for images of other sizes");
    }
    semask::Image const img = semask::resizeLinearCv(original, runW, runH);
    std::vector<float> chw = semask::normalizeChw(img);
    at::Tensor input = at::from_blob(chw.data(), {1, 3, runH, runW}, at::kFloat).to(c10::Device(device));

    auto start = std::chrono::steady_clock::now();
    std::vector<at::Tensor> outputs = loader.run({input});
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "ran " << runW << "x" << runH << " on " << device << " in " << ms << " ms (first run)\n";
    if (opt.benchIters > 0) {
        start = std::chrono::steady_clock::now();
        for (int i = 0; i < opt.benchIters; ++i) outputs = loader.run({input});
        if (device.rfind("cuda", 0) == 0) outputs[0].cpu();  // waits for the stream
        ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        std::cerr << "mean over " << opt.benchIters << " runs: " << ms / opt.benchIters << " ms\n";
    }

    int const W = original.width, H = original.height;
    std::vector<int32_t> labels;
    if (outputs.size() >= 2) {  // labels, logits: resize the logits back and take the argmax (the reference way)
        at::Tensor logits = outputs[1].to(at::kCPU, at::kFloat).contiguous();
        int const K = static_cast<int>(logits.size(1)), h = static_cast<int>(logits.size(2)),
                  w = static_cast<int>(logits.size(3));
        labels = semask::resizeArgmax(logits.data_ptr<float>(), K, h, w, H, W);
    } else {  // labels only: nearest-neighbour (re-export with --with-logits for the exact pipeline)
        at::Tensor small = outputs.at(0).to(at::kCPU, at::kInt).contiguous();
        labels = semask::resizeLabelsNearest(small.data_ptr<int32_t>(), static_cast<int>(small.size(1)),
                                             static_cast<int>(small.size(2)), H, W);
        std::cerr << "note: the package outputs labels only: resized nearest-neighbour (export --with-logits for "
                     "the exact pipeline)\n";
    }
    semask::writePgm(opt.output, semask::labelsToBytes(labels), W, H);
    std::cerr << "wrote " << opt.output << " (" << W << "x" << H << ", class index per pixel)\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parseArgs(argc, argv));
    } catch (c10::Error const& e) {  // LibTorch's errors carry a C++ stack trace: print the message only
        std::cerr << "error: " << e.what_without_backtrace() << "\n";
        return 1;
    } catch (std::exception const& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
