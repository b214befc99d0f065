import AlignKDCore
import PhotosUI
import SwiftUI
import UIKit

/// The screen. It only wires the views to AlignKDCore and CoreMLSession; model work runs off the main actor.
struct ContentView: View {
    @StateObject private var model = DemoModel()
    @State private var photoItem: PhotosPickerItem?
    @State private var showCamera = false

    var body: some View {
        NavigationStack {
            Form {
                Section("Bundle") {
                    Picker("Bundle", selection: $model.selectedBundle) {
                        Text("none").tag(URL?.none)
                        ForEach(model.bundles, id: \.self) { url in
                            Text(url.lastPathComponent).tag(URL?.some(url))
                        }
                    }
                    .onChange(of: model.selectedBundle) { _, url in model.open(url) }
                    Text(model.bundleInfo).font(.footnote).textSelection(.enabled)
                    Button("Benchmark") { model.benchmark(runs: 5, warmup: 1, maxNewTokens: 32) }
                }
                Section("Photo") {
                    if let image = model.photo {
                        Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 240)
                    }
                    PhotosPicker("Choose from library", selection: $photoItem, matching: .images)
                    Button("Take a photo") { showCamera = true }
                        .disabled(!UIImagePickerController.isSourceTypeAvailable(.camera))
                }
                Section("Question") {
                    TextField("Ask about the photo", text: $model.question, axis: .vertical)
                    HStack {
                        Button("Ask") { model.ask() }
                        Spacer()
                        Button("Stop") { model.stop() }
                    }
                }
                Section("Answer") {
                    Text(model.answer).textSelection(.enabled)
                    Text(model.stats).font(.system(.footnote, design: .monospaced))
                }
            }
            .navigationTitle("alignkd demo")
        }
        .onChange(of: photoItem) { _, item in
            Task {
                if let data = try? await item?.loadTransferable(type: Data.self), let image = UIImage(data: data) {
                    model.photo = image
                }
            }
        }
        .sheet(isPresented: $showCamera) {
            CameraPicker { image in model.photo = image }
        }
        .task { model.start() }
    }
}

/// State and actions behind ContentView.
@MainActor
final class DemoModel: ObservableObject {
    @Published var bundles = [URL]()
    @Published var selectedBundle: URL?
    @Published var bundleInfo = "Copy a bundle folder (alignkd export --target coreml) into the app's Documents/bundles "
        + "with Finder, or add it to the app's Bundles folder, then pick it here."
    @Published var photo: UIImage?
    @Published var question = ""
    @Published var answer = ""
    @Published var stats = ""
    private var session: CoreMLSession?

    static var documents: URL { FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0] }

    /// Bundle folders (holding manifest.json) in Documents/bundles and in the app's own Bundles folder.
    func start() {
        let roots = [DemoModel.documents.appendingPathComponent("bundles"),
                     Bundle.main.resourceURL?.appendingPathComponent("Bundles")].compactMap { $0 }
        try? FileManager.default.createDirectory(at: roots[0], withIntermediateDirectories: true)
        bundles = roots.flatMap { root in
            ((try? FileManager.default.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)) ?? [])
                .filter { FileManager.default.fileExists(atPath: $0.appendingPathComponent(Manifest.fileName).path) }
        }.sorted { $0.lastPathComponent < $1.lastPathComponent }
        let defaults = UserDefaults.standard  // launch arguments "-bundle NAME -benchmark YES" land here
        if let name = defaults.string(forKey: "bundle"), let url = bundles.first(where: { $0.lastPathComponent == name }) {
            selectedBundle = url
            if defaults.bool(forKey: "benchmark") {
                benchmark(runs: max(defaults.integer(forKey: "runs"), 1), warmup: defaults.object(forKey: "warmup") == nil
                          ? 1 : defaults.integer(forKey: "warmup"),
                          maxNewTokens: defaults.object(forKey: "max_new_tokens") == nil ? 32
                          : defaults.integer(forKey: "max_new_tokens"))
            } else {
                open(url)
            }
        }
    }

    func open(_ url: URL?) {
        session = nil
        guard let url else { return }
        bundleInfo = "checking \(url.lastPathComponent) (sha256 of every file) ..."
        Task.detached {
            do {
                let opened = try await CoreMLSession(folder: url, verify: true)
                let m = opened.manifest
                let info = String(format: "%@ · %@ · %.1f MB · %ld image tokens · context %ld\nverified %ld files, loaded in %.2f s",
                                  m.modelName, m.quantDescription, m.sizeMb, m.numImageTokens, m.maxSeqLen, m.files.count,
                                  opened.loadS)
                await MainActor.run {
                    self.session = opened
                    self.bundleInfo = info
                }
            } catch {
                await MainActor.run { self.bundleInfo = error.localizedDescription }
            }
        }
    }

    func ask() {
        guard let session else { answer = "choose a bundle first"; return }
        guard let cgImage = photo?.normalisedCGImage() else { answer = "choose or take a photo first"; return }
        let question = self.question
        answer = ""
        stats = ""
        Task.detached {
            do {
                let image = try RGBImage(cgImage: cgImage)
                let t0 = DispatchTime.now().uptimeNanoseconds
                let pixels = try session.preprocessor.process(rgb: image.rgb, width: image.width, height: image.height)
                let preprocessS = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                let t = try session.ask(pixels: pixels, question: question, maxNewTokens: 256) { text in
                    Task { @MainActor in self.answer = text }
                }
                let rate = t.decodeS > 0 ? Double(max(t.generatedTokens - 1, 0)) / t.decodeS : 0
                let line = String(format: "preprocess %.3f s · vision encode %.3f s · TTFT %.3f s\nprefill %ld positions · "
                                  + "decode %ld tokens at %.1f tok/s · stop: %@", preprocessS, t.visionEncodeS, t.ttftS,
                                  t.prefillTokens, t.generatedTokens, rate, t.stopReason)
                await MainActor.run { self.stats = line }
            } catch {
                await MainActor.run { self.answer = error.localizedDescription }
            }
        }
    }

    func stop() {
        session?.stop()
    }

    func benchmark(runs: Int, warmup: Int, maxNewTokens: Int) {
        guard let url = selectedBundle else { stats = "choose a bundle first"; return }
        session = nil  // each round loads the bundle afresh
        stats = ""
        Task.detached {
            do {
                let out = try await Benchmark.run(bundle: url, runs: runs, warmup: warmup, maxNewTokens: maxNewTokens,
                                                  outDir: DemoModel.documents) { line in
                    Task { @MainActor in self.stats += line + "\n" }
                }
                await MainActor.run { self.stats += "wrote \(out.lastPathComponent) to Documents\n" }
            } catch {
                await MainActor.run { self.stats += error.localizedDescription + "\n" }
            }
        }
    }
}

extension UIImage {
    /// The photo upright (camera photos carry an EXIF orientation that CGImage ignores).
    func normalisedCGImage() -> CGImage? {
        if imageOrientation == .up {
            return cgImage
        }
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        return UIGraphicsImageRenderer(size: size, format: format).image { _ in draw(at: .zero) }.cgImage
    }
}

/// The system camera as a SwiftUI sheet.
struct CameraPicker: UIViewControllerRepresentable {
    let onImage: (UIImage) -> Void
    @Environment(\.dismiss) private var dismiss

    func makeUIViewController(context: Context) -> UIImagePickerController {
        let picker = UIImagePickerController()
        picker.sourceType = .camera
        picker.delegate = context.coordinator
        return picker
    }

    func updateUIViewController(_ controller: UIImagePickerController, context: Context) {}

    func makeCoordinator() -> Coordinator { Coordinator(self) }

    final class Coordinator: NSObject, UIImagePickerControllerDelegate, UINavigationControllerDelegate {
        let parent: CameraPicker

        init(_ parent: CameraPicker) {
            self.parent = parent
        }

        func imagePickerController(_ picker: UIImagePickerController,
                                   didFinishPickingMediaWithInfo info: [UIImagePickerController.InfoKey: Any]) {
            if let image = info[.originalImage] as? UIImage {
                parent.onImage(image)
            }
            parent.dismiss()
        }
    }
}
