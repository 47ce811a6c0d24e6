// semask_trt: run a SeMask TensorRT engine on one image and write its label map.
//
//   semask_trt <model.engine> <image> <labels.png|labels.pgm> [options]
//
// The engine comes from `semask-export --trt`: input "image" float32 (N,3,H,W), RGB normalised with
// mean (123.675, 116.28, 103.53) / std (58.395, 57.12, 57.375) on 0-255 -- or "image_uint8" uint8 (N,H,W,3)
// when exported with --preprocess -- [+ "output_size" int64 [2], semask-export's default: then "labels" come at
// the original image size, exactly] -- and outputs "labels" int32 (N,H,W) and optionally "logits" float32
// (N,K,H,W). The image is resized keeping its aspect ratio (mmseg's rule: long edge <= 2048, short edge
// <= 512 by default), clamped into the engine's optimisation profile, run with enqueueV3, and the result is
// brought back to the original size: bilinearly resized logits + argmax when the engine has "logits"
// (what the reference pipeline does), otherwise nearest-neighbour resized labels.
//
// Written against the TensorRT 10 C++ API (createInferRuntime, deserializeCudaEngine, name-based tensors,
// setInputShape/setTensorAddress/enqueueV3). Build with CMake; see README.md.

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#ifdef SEMASK_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace {

#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess)                                                                   \
            throw std::runtime_error(std::string(#call) + " failed: " + cudaGetErrorString(err_)); \
    } while (0)

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, char const* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
    }
};

struct Options {
    std::string engine, image, output;
    int longEdge = 2048, shortEdge = 512;  // ADE20K/COCO-Stuff test scale; Cityscapes: 2048,1024
    bool resize = true;
    std::array<float, 3> mean{123.675f, 116.28f, 103.53f};
    std::array<float, 3> stdev{58.395f, 57.12f, 57.375f};
    int benchIters = 0;
};

struct Image {  // 8-bit RGB, row-major H x W x 3
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;
};

// Device buffer freed on scope exit.
struct DeviceBuffer {
    void* ptr = nullptr;
    explicit DeviceBuffer(size_t bytes) { CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(bytes, 1))); }
    ~DeviceBuffer() { cudaFree(ptr); }
    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;
};

[[noreturn]] void usage(char const* argv0) {
    std::cerr << "usage: " << argv0 << " <model.engine> <image> <labels.png|.pgm> [--scale LONG,SHORT] [--no-resize]\n"
              << "       [--mean R,G,B] [--std R,G,B] [--bench N]\n"
              << "  --scale      keep-ratio test scale (default 2048,512; Cityscapes 2048,1024)\n"
              << "  --no-resize  run at the image's own size\n"
              << "  --mean/--std normalisation on 0-255 RGB (defaults: ImageNet, as in the sidecar)\n"
              << "  --bench N    also time N extra enqueueV3 runs\n";
    std::exit(2);
}

std::array<float, 3> parseTriple(std::string const& s) {
    std::array<float, 3> v{};
    char c1 = 0, c2 = 0;
    std::istringstream in(s);
    if (!(in >> v[0] >> c1 >> v[1] >> c2 >> v[2]) || c1 != ',' || c2 != ',')
        throw std::runtime_error("expected three comma-separated numbers, got '" + s + "'");
    return v;
}

Options parseArgs(int argc, char** argv) {
    if (argc < 4) usage(argv[0]);
    Options o;
    o.engine = argv[1];
    o.image = argv[2];
    o.output = argv[3];
    for (int i = 4; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) usage(argv[0]);
            return argv[++i];
        };
        if (a == "--scale") {
            char comma = 0;
            std::istringstream in(next());
            if (!(in >> o.longEdge >> comma >> o.shortEdge) || comma != ',') usage(argv[0]);
        } else if (a == "--no-resize") {
            o.resize = false;
        } else if (a == "--mean") {
            o.mean = parseTriple(next());
        } else if (a == "--std") {
            o.stdev = parseTriple(next());
        } else if (a == "--bench") {
            o.benchIters = std::stoi(next());
        } else {
            usage(argv[0]);
        }
    }
    return o;
}

std::vector<char> readFile(std::string const& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

#ifndef SEMASK_WITH_OPENCV
// Binary PPM (P6, maxval 255) reader: the format every converter writes (`convert x.jpg x.ppm`).
Image readPpm(std::string const& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    auto token = [&]() {
        std::string t;
        while (f && t.empty()) {
            int c = f.get();
            if (c == std::char_traits<char>::eof()) break;
            if (c == '#') {
                std::string skip;
                std::getline(f, skip);
            } else if (!std::isspace(c)) {
                t.push_back(static_cast<char>(c));
                for (int p = f.peek(); p != std::char_traits<char>::eof() && !std::isspace(p); p = f.peek())
                    t.push_back(static_cast<char>(f.get()));
            }
        }
        if (t.empty()) throw std::runtime_error(path + ": truncated PPM header");
        return t;
    };
    if (token() != "P6") throw std::runtime_error(path + ": not a binary PPM (P6); build with OpenCV for other formats");
    Image img;
    img.width = std::stoi(token());
    img.height = std::stoi(token());
    if (std::stoi(token()) != 255) throw std::runtime_error(path + ": only 8-bit PPM is supported");
    f.get();  // the single whitespace after maxval
    img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
    f.read(reinterpret_cast<char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
    if (!f) throw std::runtime_error(path + ": truncated PPM");
    return img;
}

// Bilinear resize with half-pixel centres (cv::INTER_LINEAR's convention).
Image resizeBilinear(Image const& src, int w, int h) {
    Image dst{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * 3)};
    for (int y = 0; y < h; ++y) {
        float sy = std::max(0.f, (y + 0.5f) * src.height / h - 0.5f);
        int y0 = std::min(static_cast<int>(sy), src.height - 1), y1 = std::min(y0 + 1, src.height - 1);
        float fy = sy - y0;
        for (int x = 0; x < w; ++x) {
            float sx = std::max(0.f, (x + 0.5f) * src.width / w - 0.5f);
            int x0 = std::min(static_cast<int>(sx), src.width - 1), x1 = std::min(x0 + 1, src.width - 1);
            float fx = sx - x0;
            for (int c = 0; c < 3; ++c) {
                auto p = [&](int yy, int xx) { return static_cast<float>(src.rgb[(static_cast<size_t>(yy) * src.width + xx) * 3 + c]); };
                float v = (1 - fy) * ((1 - fx) * p(y0, x0) + fx * p(y0, x1)) + fy * ((1 - fx) * p(y1, x0) + fx * p(y1, x1));
                dst.rgb[(static_cast<size_t>(y) * w + x) * 3 + c] = static_cast<uint8_t>(std::lround(std::clamp(v, 0.f, 255.f)));
            }
        }
    }
    return dst;
}
#endif

Image readImage(std::string const& path) {
#ifdef SEMASK_WITH_OPENCV
    cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
    if (bgr.empty()) throw std::runtime_error("cannot read image " + path);
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    Image img{rgb.cols, rgb.rows, {}};
    img.rgb.assign(rgb.data, rgb.data + rgb.total() * 3);  // imread + cvtColor give continuous memory
    return img;
#else
    return readPpm(path);
#endif
}

Image resizeImage(Image const& src, int w, int h) {
    if (w == src.width && h == src.height) return src;
#ifdef SEMASK_WITH_OPENCV
    cv::Mat in(src.height, src.width, CV_8UC3, const_cast<uint8_t*>(src.rgb.data())), out;
    cv::resize(in, out, cv::Size(w, h), 0, 0, cv::INTER_LINEAR);
    Image dst{w, h, {}};
    dst.rgb.assign(out.data, out.data + out.total() * 3);
    return dst;
#else
    return resizeBilinear(src, w, h);
#endif
}

void writeLabels(std::string const& path, std::vector<uint8_t> const& labels, int w, int h) {
#ifdef SEMASK_WITH_OPENCV
    cv::Mat m(h, w, CV_8UC1, const_cast<uint8_t*>(labels.data()));
    if (!cv::imwrite(path, m)) throw std::runtime_error("cannot write " + path);
#else
    if (path.size() < 4 || path.substr(path.size() - 4) != ".pgm")
        std::cerr << "note: built without OpenCV, writing a PGM (P5) image to " << path << "\n";
    std::ofstream f(path, std::ios::binary);
    f << "P5\n" << w << " " << h << "\n255\n";
    f.write(reinterpret_cast<char const*>(labels.data()), static_cast<std::streamsize>(labels.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
#endif
}

size_t elementSize(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: return 4;
        case nvinfer1::DataType::kHALF: return 2;
        case nvinfer1::DataType::kBF16: return 2;
        case nvinfer1::DataType::kINT32: return 4;
        case nvinfer1::DataType::kINT64: return 8;
        case nvinfer1::DataType::kINT8: return 1;
        case nvinfer1::DataType::kUINT8: return 1;
        case nvinfer1::DataType::kBOOL: return 1;
        default: throw std::runtime_error("unsupported I/O tensor data type");
    }
}

int64_t volume(nvinfer1::Dims const& d) {
    int64_t v = 1;
    for (int i = 0; i < d.nbDims; ++i) {
        if (d.d[i] < 0) throw std::runtime_error("unresolved dynamic dimension");
        v *= d.d[i];
    }
    return v;
}

// mmseg keep-ratio rescale: the largest scale with long edge <= longEdge and short edge <= shortEdge.
std::pair<int, int> keepRatioSize(int w, int h, int longEdge, int shortEdge) {
    double s = std::min(static_cast<double>(longEdge) / std::max(w, h), static_cast<double>(shortEdge) / std::min(w, h));
    return {static_cast<int>(w * s + 0.5), static_cast<int>(h * s + 0.5)};
}

struct TensorInfo {
    std::string name;
    nvinfer1::DataType type;
};

int run(Options const& opt) {
    Logger logger;
    std::vector<char> blob = readFile(opt.engine);
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (!runtime) throw std::runtime_error("createInferRuntime failed");
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(blob.data(), blob.size())};
    if (!engine) throw std::runtime_error("cannot deserialize " + opt.engine + " (built with another TensorRT version or GPU?)");
    std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
    if (!context) throw std::runtime_error("createExecutionContext failed");

    std::vector<TensorInfo> inputs, outputs;
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i) {
        char const* name = engine->getIOTensorName(i);
        TensorInfo t{name, engine->getTensorDataType(name)};
        (engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).push_back(t);
    }
    // semask-export's default graphs also take "output_size" int64 [2] = (height, width) of the ORIGINAL image: the
    // engine resizes its logits there and takes the argmax (the official pipeline; no post-processing here)
    TensorInfo const* sizeIn = nullptr;
    std::vector<TensorInfo> images;
    for (auto const& t : inputs) {
        if (t.name == "output_size") sizeIn = &t;
        else images.push_back(t);
    }
    if (images.size() != 1) throw std::runtime_error("expected one image input (image or image_uint8) [+ output_size]");
    TensorInfo const in = images[0];
    bool const uint8Input = in.type == nvinfer1::DataType::kUINT8;  // NHWC, preprocessing baked in
    if (!uint8Input && in.type != nvinfer1::DataType::kFLOAT) throw std::runtime_error("input must be float32 or uint8");
    int const hAxis = uint8Input ? 1 : 2, wAxis = uint8Input ? 2 : 3;
    TensorInfo const* labelsOut = nullptr;
    TensorInfo const* logitsOut = nullptr;
    for (auto const& t : outputs) {
        if (t.name == "labels" || (!labelsOut && t.type == nvinfer1::DataType::kINT32)) labelsOut = &t;
        if (t.name == "logits" && t.type == nvinfer1::DataType::kFLOAT) logitsOut = &t;
    }
    if (!labelsOut && !logitsOut) throw std::runtime_error("engine has neither an int32 'labels' nor a float32 'logits' output");

    // ---- image and the size the engine runs at
    Image const original = readImage(opt.image);
    nvinfer1::Dims const declared = engine->getTensorShape(in.name.c_str());
    int runW = original.width, runH = original.height;
    if (declared.d[hAxis] > 0 && declared.d[wAxis] > 0) {  // static engine: its size is the size
        runH = static_cast<int>(declared.d[hAxis]);
        runW = static_cast<int>(declared.d[wAxis]);
    } else {
        if (opt.resize) std::tie(runW, runH) = keepRatioSize(original.width, original.height, opt.longEdge, opt.shortEdge);
        nvinfer1::Dims const mx = engine->getProfileShape(in.name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
        nvinfer1::Dims const mn = engine->getProfileShape(in.name.c_str(), 0, nvinfer1::OptProfileSelector::kMIN);
        if (runH > mx.d[hAxis] || runW > mx.d[wAxis]) {  // shrink (keeping the ratio) into the profile
            double s = std::min(static_cast<double>(mx.d[hAxis]) / runH, static_cast<double>(mx.d[wAxis]) / runW);
            runW = std::max(1, static_cast<int>(runW * s));
            runH = std::max(1, static_cast<int>(runH * s));
        }
        if (runH < mn.d[hAxis] || runW < mn.d[wAxis])
            throw std::runtime_error("image too small for the engine's profile (min " + std::to_string(mn.d[hAxis]) + "x" +
                                     std::to_string(mn.d[wAxis]) + ")");
    }
    Image const img = resizeImage(original, runW, runH);
    size_t const plane = static_cast<size_t>(runW) * runH;

    nvinfer1::Dims shape{};
    shape.nbDims = 4;
    if (uint8Input) {
        shape.d[0] = 1, shape.d[1] = runH, shape.d[2] = runW, shape.d[3] = 3;
    } else {
        shape.d[0] = 1, shape.d[1] = 3, shape.d[2] = runH, shape.d[3] = runW;
    }
    if (!context->setInputShape(in.name.c_str(), shape))
        throw std::runtime_error("setInputShape(" + std::to_string(runH) + "x" + std::to_string(runW) + ") rejected");
    int64_t outputSize[2] = {original.height, original.width};  // a shape tensor: TensorRT reads it from HOST memory
    if (sizeIn) {
        if (sizeIn->type != nvinfer1::DataType::kINT64) throw std::runtime_error("output_size must be int64");
        nvinfer1::Dims sizeShape{};
        sizeShape.nbDims = 1;
        sizeShape.d[0] = 2;
        if (!context->setInputShape(sizeIn->name.c_str(), sizeShape) ||
            !context->setTensorAddress(sizeIn->name.c_str(), outputSize))
            throw std::runtime_error("output_size " + std::to_string(original.height) + "x" +
                                     std::to_string(original.width) + " rejected (outside the engine's profile?)");
    }

    // ---- host input: RGB, normalised, planar (or the raw bytes for the uint8 engine)
    std::vector<float> chw;
    void const* hostIn = img.rgb.data();
    size_t inBytes = img.rgb.size();
    if (!uint8Input) {
        chw.resize(3 * plane);
        for (size_t p = 0; p < plane; ++p)
            for (int c = 0; c < 3; ++c) chw[c * plane + p] = (img.rgb[p * 3 + c] - opt.mean[c]) / opt.stdev[c];
        hostIn = chw.data();
        inBytes = chw.size() * sizeof(float);
    }

    // ---- device buffers for every I/O tensor (TensorRT needs an address for each)
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreate(&stream));
    DeviceBuffer dIn(inBytes);
    CUDA_CHECK(cudaMemcpyAsync(dIn.ptr, hostIn, inBytes, cudaMemcpyHostToDevice, stream));
    context->setTensorAddress(in.name.c_str(), dIn.ptr);
    std::vector<std::unique_ptr<DeviceBuffer>> dOut;
    std::vector<nvinfer1::Dims> outShapes;
    for (auto const& t : outputs) {
        outShapes.push_back(context->getTensorShape(t.name.c_str()));
        dOut.push_back(std::make_unique<DeviceBuffer>(static_cast<size_t>(volume(outShapes.back())) * elementSize(t.type)));
        context->setTensorAddress(t.name.c_str(), dOut.back()->ptr);
    }
    auto start = std::chrono::steady_clock::now();
    if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");
    CUDA_CHECK(cudaStreamSynchronize(stream));
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "ran " << runW << "x" << runH << " in " << ms << " ms (first run)\n";
    if (opt.benchIters > 0) {
        start = std::chrono::steady_clock::now();
        for (int i = 0; i < opt.benchIters; ++i)
            if (!context->enqueueV3(stream)) throw std::runtime_error("enqueueV3 failed");
        CUDA_CHECK(cudaStreamSynchronize(stream));
        ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        std::cerr << "mean over " << opt.benchIters << " runs: " << ms / opt.benchIters << " ms\n";
    }

    // ---- back to the original size
    int const W = original.width, H = original.height;
    std::vector<uint8_t> labels(static_cast<size_t>(W) * H);
    auto index = [&](TensorInfo const* t) { return static_cast<size_t>(t - outputs.data()); };
    if (sizeIn && labelsOut) {  // the engine's labels are already the official ones at H x W
        std::vector<int32_t> full(static_cast<size_t>(W) * H);
        CUDA_CHECK(cudaMemcpyAsync(full.data(), dOut[index(labelsOut)]->ptr, full.size() * sizeof(int32_t),
                                   cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        for (size_t p = 0; p < full.size(); ++p) labels[p] = static_cast<uint8_t>(std::clamp<int32_t>(full[p], 0, 255));
    } else if (logitsOut) {  // bilinear (align_corners=False) per class, argmax on the fly: no K x H x W buffer
        nvinfer1::Dims const& d = outShapes[index(logitsOut)];
        int const K = static_cast<int>(d.d[1]), h = static_cast<int>(d.d[2]), w = static_cast<int>(d.d[3]);
        std::vector<float> logits(static_cast<size_t>(K) * h * w);
        CUDA_CHECK(cudaMemcpyAsync(logits.data(), dOut[index(logitsOut)]->ptr, logits.size() * sizeof(float),
                                   cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        for (int y = 0; y < H; ++y) {
            float sy = std::max(0.f, (y + 0.5f) * h / H - 0.5f);
            int y0 = std::min(static_cast<int>(sy), h - 1), y1 = std::min(y0 + 1, h - 1);
            float fy = sy - y0;
            for (int x = 0; x < W; ++x) {
                float sx = std::max(0.f, (x + 0.5f) * w / W - 0.5f);
                int x0 = std::min(static_cast<int>(sx), w - 1), x1 = std::min(x0 + 1, w - 1);
                float fx = sx - x0;
                int best = 0;
                float bestValue = -INFINITY;
                for (int k = 0; k < K; ++k) {
                    float const* l = logits.data() + static_cast<size_t>(k) * h * w;
                    float v = (1 - fy) * ((1 - fx) * l[y0 * w + x0] + fx * l[y0 * w + x1]) +
                              fy * ((1 - fx) * l[y1 * w + x0] + fx * l[y1 * w + x1]);
                    if (v > bestValue) bestValue = v, best = k;
                }
                labels[static_cast<size_t>(y) * W + x] = static_cast<uint8_t>(std::min(best, 255));
            }
        }
    } else {  // nearest-neighbour resize of the int32 labels
        nvinfer1::Dims const& d = outShapes[index(labelsOut)];
        int const h = static_cast<int>(d.d[1]), w = static_cast<int>(d.d[2]);
        std::vector<int32_t> small(static_cast<size_t>(h) * w);
        CUDA_CHECK(cudaMemcpyAsync(small.data(), dOut[index(labelsOut)]->ptr, small.size() * sizeof(int32_t),
                                   cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x) {
                int32_t v = small[static_cast<size_t>(std::min(y * h / H, h - 1)) * w + std::min(x * w / W, w - 1)];
                labels[static_cast<size_t>(y) * W + x] = static_cast<uint8_t>(std::clamp<int32_t>(v, 0, 255));
            }
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
    writeLabels(opt.output, labels, W, H);
    std::cerr << "wrote " << opt.output << " (" << W << "x" << H << ", class index per pixel)\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parseArgs(argc, argv));
    } catch (std::exception const& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
