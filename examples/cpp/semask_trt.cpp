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
// Pre/post-processing is semask_pipeline.h, shared with the AOTInductor app (and unit-tested there); the TensorRT
// plugin library is initialised so plugin layers (DeformConv of the FaPN models) deserialise.
// Written against the TensorRT 10 C++ API (createInferRuntime, deserializeCudaEngine, name-based tensors,
// setInputShape/setTensorAddress/enqueueV3). Build with CMake; see README.md.

#include <NvInfer.h>
#include <NvInferPlugin.h>
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

#include "semask_pipeline.h"  // shared with semask_aoti.cpp: PPM/PGM, keep-ratio resize, normalise, resize+argmax

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

using semask::Image;

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
    return semask::readPpm(path);
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
    return semask::resizeLinearCv(src, w, h);  // OpenCV's INTER_LINEAR, bit for bit
#endif
}

void writeLabels(std::string const& path, std::vector<uint8_t> const& labels, int w, int h) {
#ifdef SEMASK_WITH_OPENCV
    cv::Mat m(h, w, CV_8UC1, const_cast<uint8_t*>(labels.data()));
    if (!cv::imwrite(path, m)) throw std::runtime_error("cannot write " + path);
#else
    if (path.size() < 4 || path.substr(path.size() - 4) != ".pgm")
        std::cerr << "note: built without OpenCV, writing a PGM (P5) image to " << path << "\n";
    semask::writePgm(path, labels, w, h);
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

struct TensorInfo {
    std::string name;
    nvinfer1::DataType type;
};

int run(Options const& opt) {
    Logger logger;
    if (!initLibNvInferPlugins(&logger, ""))  // plugin layers, e.g. ModulatedDeformConv2d (FaPN)
        throw std::runtime_error("initLibNvInferPlugins failed");
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
    std::string const resizeKind = semask::sidecarResizeKind(opt.engine);
    if (resizeKind != "keep_ratio")  // Mask2Former & co (the engine's sidecar says so): not this app's resize
        throw std::runtime_error("the engine's sidecar gives the test-time resize '" + resizeKind +
                                 "' (detectron2's shortest edge with PIL's bilinear filter), which this app does not "
                                 "reproduce; run the engine with semask-infer or semask_deploy.Segmenter");
    Image const original = readImage(opt.image);
    nvinfer1::Dims const declared = engine->getTensorShape(in.name.c_str());
    int runW = original.width, runH = original.height;
    if (declared.d[hAxis] > 0 && declared.d[wAxis] > 0) {  // static engine: its size is the size
        runH = static_cast<int>(declared.d[hAxis]);
        runW = static_cast<int>(declared.d[wAxis]);
    } else {
        if (opt.resize) std::tie(runW, runH) = semask::keepRatioSize(original.width, original.height, opt.longEdge, opt.shortEdge);
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
        chw = semask::normalizeChw(img, opt.mean, opt.stdev);
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
    std::vector<uint8_t> labels;
    auto index = [&](TensorInfo const* t) { return static_cast<size_t>(t - outputs.data()); };
    if (sizeIn && labelsOut) {  // the engine's labels are already the official ones at H x W
        std::vector<int32_t> full(static_cast<size_t>(W) * H);
        CUDA_CHECK(cudaMemcpyAsync(full.data(), dOut[index(labelsOut)]->ptr, full.size() * sizeof(int32_t),
                                   cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        labels = semask::labelsToBytes(full);
    } else if (logitsOut) {  // bilinear (align_corners=False, PyTorch's rule) and argmax, two rows at a time
        nvinfer1::Dims const& d = outShapes[index(logitsOut)];
        int const K = static_cast<int>(d.d[1]), h = static_cast<int>(d.d[2]), w = static_cast<int>(d.d[3]);
        std::vector<float> logits(static_cast<size_t>(K) * h * w);
        CUDA_CHECK(cudaMemcpyAsync(logits.data(), dOut[index(logitsOut)]->ptr, logits.size() * sizeof(float),
                                   cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        labels = semask::labelsToBytes(semask::resizeArgmax(logits.data(), K, h, w, H, W));
    } else {  // nearest-neighbour resize of the int32 labels
        nvinfer1::Dims const& d = outShapes[index(labelsOut)];
        int const h = static_cast<int>(d.d[1]), w = static_cast<int>(d.d[2]);
        std::vector<int32_t> small(static_cast<size_t>(h) * w);
        CUDA_CHECK(cudaMemcpyAsync(small.data(), dOut[index(labelsOut)]->ptr, small.size() * sizeof(int32_t),
                                   cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        labels = semask::labelsToBytes(semask::resizeLabelsNearest(small.data(), h, w, H, W));
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
